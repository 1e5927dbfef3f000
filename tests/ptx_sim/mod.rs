//! A PTX interpreter for the subset netc emits: it runs each kernel's
//! *text* (not its launch plan) over every thread of the planned grid,
//! blocks in lockstep between `bar.sync`s, with fake global and shared
//! addresses that are decoded and bounds-checked on every access. The
//! launch-geometry interpreter checks the plan; this checks that the PTX
//! printed from it — index arithmetic included — computes the same.

use netc_compiler::codegen::ptx::precision::tf32;
use netc_compiler::codegen::ptx::{KernelPlan, PtxModule};
use std::collections::HashMap;

const GLOBAL_SHIFT: u32 = 40;
const SHARED_BASE: u64 = 1 << 62;

#[derive(Clone, Debug)]
enum Arg {
    Reg(usize),
    Imm(u64),
    Special(&'static str),
    /// `[reg + offset]`, `[symbol]` (a parameter) resolved at load time.
    Mem(Option<usize>, i64, String),
    /// A vector of registers, `{%f1, %f2, %f3, %f4}`.
    Vec(Vec<usize>),
}

#[derive(Clone, Debug)]
struct Ins {
    pred: Option<(bool, usize)>,
    op: String,
    args: Vec<Arg>,
    /// Branch target (instruction index).
    target: usize,
}

struct Entry {
    code: Vec<Ins>,
    regs: usize,
    shared: HashMap<String, (u64, usize)>,
}

fn parse_entry(module: &str, entry: &str) -> Entry {
    let head = format!(".visible .entry {entry}(");
    let start = module
        .find(&head)
        .unwrap_or_else(|| panic!("no entry {entry}"));
    // Shared arrays declared before the entry (after its launch comment).
    let launch = module[..start].rfind("// launch ").unwrap();
    let mut shared = HashMap::new();
    for l in module[launch..start].lines() {
        if let Some(rest) = l.strip_prefix(".shared .align ") {
            let rest = rest.split_once(" .f32 ").unwrap().1;
            let (name, n) = rest.trim_end_matches("];").split_once('[').unwrap();
            let k = shared.len() as u64;
            shared.insert(
                name.to_string(),
                (SHARED_BASE + (k << 32), n.parse().unwrap()),
            );
        }
    }
    let body_start = start + module[start..].find("\n{\n").unwrap() + 3;
    let body_end = body_start + module[body_start..].find("\n}\n").unwrap();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut labels = HashMap::new();
    let mut raw = Vec::new();
    for l in module[body_start..body_end].lines() {
        let t = l.trim();
        if t.is_empty() || t.starts_with(".reg") || t.starts_with(".pragma") {
            continue;
        }
        if let Some(lab) = t.strip_suffix(':') {
            labels.insert(lab.to_string(), raw.len());
            continue;
        }
        raw.push(t.trim_end_matches(';').to_string());
    }
    let reg = |names: &mut HashMap<String, usize>, r: &str| {
        let n = names.len();
        *names.entry(r.to_string()).or_insert(n)
    };
    let mut code = Vec::new();
    for t in raw {
        let (pred, rest) = match t.strip_prefix('@') {
            Some(p) => {
                let (p, rest) = p.split_once(' ').unwrap();
                let (neg, p) = match p.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, p),
                };
                (Some((neg, reg(&mut names, p))), rest.trim())
            }
            None => (None, t.as_str()),
        };
        let (op, operands) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let mut target = usize::MAX;
        let mut args = Vec::new();
        if op.starts_with("bra") {
            target = labels[operands.trim()];
        } else {
            // Commas inside a `{...}` vector do not separate operands.
            let mut parts: Vec<String> = Vec::new();
            let mut depth = 0;
            let mut cur = String::new();
            for ch in operands.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(std::mem::take(&mut cur));
                        continue;
                    }
                    _ => {}
                }
                cur.push(ch);
            }
            parts.push(cur);
            for a in parts.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
                args.push(if let Some(v) = a.strip_prefix('{') {
                    Arg::Vec(
                        v.trim_end_matches('}')
                            .split(',')
                            .map(|r| reg(&mut names, r.trim()))
                            .collect(),
                    )
                } else if let Some(m) = a.strip_prefix('[') {
                    let m = m.trim_end_matches(']');
                    let (base, off) = match m.split_once('+') {
                        Some((b, o)) => (b, o.parse().unwrap()),
                        None => (m, 0),
                    };
                    if base.starts_with('%') {
                        Arg::Mem(Some(reg(&mut names, base)), off, String::new())
                    } else {
                        Arg::Mem(None, off, base.to_string())
                    }
                } else if let Some(s) = [
                    "%tid.x",
                    "%tid.y",
                    "%ctaid.x",
                    "%ctaid.y",
                    "%ntid.x",
                    "%nctaid.x",
                ]
                .into_iter()
                .find(|s| *s == a)
                {
                    Arg::Special(s)
                } else if a.starts_with('%') {
                    Arg::Reg(reg(&mut names, a))
                } else if let Some(h) = a.strip_prefix("0f") {
                    Arg::Imm(u64::from(u32::from_str_radix(h, 16).unwrap()))
                } else if let Some((addr, _)) = shared.get(a) {
                    Arg::Imm(*addr)
                } else {
                    Arg::Imm(a.parse::<i64>().map(|v| v as u64).unwrap_or_else(|_| {
                        a.parse::<u64>()
                            .unwrap_or_else(|_| panic!("{entry}: operand `{a}` in `{t}`"))
                    }))
                });
            }
        }
        code.push(Ins {
            pred,
            op: op.to_string(),
            args,
            target,
        });
    }
    Entry {
        code,
        regs: names.len(),
        shared,
    }
}

struct Thread {
    regs: Vec<u64>,
    pc: usize,
    done: bool,
    /// Waiting at the warp-collective `mma.sync` at `pc` for its warp.
    at_mma: bool,
}

/// One warp's `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`
/// `{d}, {a}, {b}, {c}`: the 16×8 A, 8×8 B and 16×8 C assembled from the
/// lanes' registers by the PTX ISA's fragment layout for `.tf32` (lane
/// `l`, `g = l / 4`, `q = l % 4`: A's a_r at row `g + 8·(r % 2)`, column
/// `q + 4·(r / 2)`; B's b_r at row `q + 4·r`, column `g`; C's and D's c_r
/// at row `g + 8·(r / 2)`, column `2q + r % 2`), written here from the
/// ISA text independently of the compiler's `mma` module; D = C + A·B in
/// f32, k ascending.
fn mma(ins: &Ins, warp: &mut [Thread]) {
    let regs = |i: usize| -> &Vec<usize> {
        let Arg::Vec(v) = &ins.args[i] else {
            panic!("mma operand {i}: {ins:?}")
        };
        v
    };
    let (d, a, b, c) = (regs(0), regs(1), regs(2), regs(3));
    let (mut am, mut bm, mut cm) = ([[0f32; 8]; 16], [[0f32; 8]; 8], [[0f32; 8]; 16]);
    for (l, t) in warp.iter().enumerate() {
        let (g, q) = (l / 4, l % 4);
        for (r, reg) in a.iter().enumerate() {
            am[g + 8 * (r % 2)][q + 4 * (r / 2)] = f(t.regs[*reg]);
        }
        for (r, reg) in b.iter().enumerate() {
            bm[q + 4 * r][g] = f(t.regs[*reg]);
        }
        for (r, reg) in c.iter().enumerate() {
            cm[g + 8 * (r / 2)][2 * q + r % 2] = f(t.regs[*reg]);
        }
    }
    for (l, t) in warp.iter_mut().enumerate() {
        let (g, q) = (l / 4, l % 4);
        for (r, reg) in d.iter().enumerate() {
            let (row, col) = (g + 8 * (r / 2), 2 * q + r % 2);
            let mut acc = cm[row][col];
            for k in 0..8 {
                acc += am[row][k] * bm[k][col];
            }
            t.regs[*reg] = fb(acc);
        }
    }
}

fn f(x: u64) -> f32 {
    f32::from_bits(x as u32)
}
fn fb(x: f32) -> u64 {
    u64::from(x.to_bits())
}
fn sx32(x: u64) -> i64 {
    i64::from(x as u32 as i32)
}

/// Runs every kernel of `m` over `bufs` (one `Vec` per program buffer).
pub fn run_module(m: &PtxModule, bufs: &mut [Vec<f32>]) {
    for plan in &m.plans {
        run_kernel(&m.text, plan, bufs);
    }
}

fn run_kernel(module: &str, plan: &KernelPlan, bufs: &mut [Vec<f32>]) {
    run_entry(
        module,
        &plan.entry,
        plan.grid,
        plan.block,
        &plan.params,
        bufs,
    );
}

/// Runs entry `name` of `module` over `grid` × `block` threads, its
/// pointer parameters pointing at `bufs[params[i]]`.
pub fn run_entry(
    module: &str,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    params: &[usize],
    bufs: &mut [Vec<f32>],
) {
    let e = parse_entry(module, name);
    let nthreads = (block[0] * block[1] * block[2]) as usize;
    for by in 0..grid[1] {
        for bx in 0..grid[0] {
            let mut shared: HashMap<u64, Vec<f32>> = e
                .shared
                .values()
                .map(|(a, n)| (*a, vec![f32::NAN; *n]))
                .collect();
            let mut threads: Vec<Thread> = (0..nthreads)
                .map(|_| Thread {
                    regs: vec![0; e.regs],
                    pc: 0,
                    done: false,
                    at_mma: false,
                })
                .collect();
            while threads.iter().any(|t| !t.done) {
                for (tid, th) in threads.iter_mut().enumerate() {
                    let special = |s: &str| -> u64 {
                        u64::from(match s {
                            "%tid.x" => tid as u32 % block[0],
                            "%tid.y" => tid as u32 / block[0],
                            "%ctaid.x" => bx,
                            "%ctaid.y" => by,
                            "%ntid.x" => block[0],
                            "%nctaid.x" => grid[0],
                            _ => unreachable!(),
                        })
                    };
                    let mut steps = 0u64;
                    while !th.done && !th.at_mma {
                        let ins = &e.code[th.pc];
                        th.pc += 1;
                        steps += 1;
                        assert!(steps < 1 << 32, "{name}: runaway thread");
                        if let Some((neg, p)) = ins.pred {
                            if (th.regs[p] != 0) == neg {
                                continue;
                            }
                        }
                        let v = |i: usize, regs: &[u64]| -> u64 {
                            match &ins.args[i] {
                                Arg::Reg(r) => regs[*r],
                                Arg::Imm(x) => *x,
                                Arg::Special(s) => special(s),
                                Arg::Mem(..) | Arg::Vec(_) => {
                                    panic!("{name}: memory or vector operand in `{ins:?}`")
                                }
                            }
                        };
                        let addr = |i: usize, regs: &[u64]| -> (u64, String) {
                            match &ins.args[i] {
                                Arg::Mem(Some(r), off, _) => {
                                    (regs[*r].wrapping_add(*off as u64), String::new())
                                }
                                Arg::Mem(None, _, sym) => (0, sym.clone()),
                                _ => panic!("{name}: not a memory operand: {ins:?}"),
                            }
                        };
                        match ins.op.as_str() {
                            "bra" | "bra.uni" => {
                                th.pc = ins.target;
                                continue;
                            }
                            "ret" => {
                                th.done = true;
                                continue;
                            }
                            "bar.sync" => break,
                            // A warp collective: wait here for the warp.
                            _ if ins.op.starts_with("mma.sync") => {
                                th.pc -= 1;
                                th.at_mma = true;
                                break;
                            }
                            // Copies complete at once here: the geometry
                            // interpreter models their asynchrony.
                            "cp.async.commit_group" | "cp.async.wait_group" => continue,
                            "cp.async.ca.shared.global" => {
                                let (d, _) = addr(0, &th.regs);
                                let (s, _) = addr(1, &th.regs);
                                for i in 0..v(2, &th.regs) / 4 {
                                    let x = *global(bufs, s + 4 * i, name);
                                    *shared_at(&mut shared, d + 4 * i, name) = x;
                                }
                                continue;
                            }
                            "st.shared.v4.f32" => {
                                let (a, _) = addr(0, &th.regs);
                                let Arg::Vec(rs) = &ins.args[1] else {
                                    panic!("{name}: {ins:?}")
                                };
                                for (i, r) in rs.iter().enumerate() {
                                    *shared_at(&mut shared, a + 4 * i as u64, name) =
                                        f(th.regs[*r]);
                                }
                                continue;
                            }
                            "ld.shared.v4.f32" => {
                                let (a, _) = addr(1, &th.regs);
                                let Arg::Vec(rs) = &ins.args[0] else {
                                    panic!("{name}: {ins:?}")
                                };
                                for (i, r) in rs.iter().enumerate() {
                                    th.regs[*r] =
                                        fb(*shared_at(&mut shared, a + 4 * i as u64, name));
                                }
                                continue;
                            }
                            "st.global.f32" | "st.shared.f32" => {
                                let (a, _) = addr(0, &th.regs);
                                let x = f(v(1, &th.regs));
                                if ins.op == "st.global.f32" {
                                    *global(bufs, a, name) = x;
                                } else {
                                    *shared_at(&mut shared, a, name) = x;
                                }
                                continue;
                            }
                            _ => {}
                        }
                        let Some(Arg::Reg(d)) = ins.args.first().cloned() else {
                            panic!("{name}: {ins:?}")
                        };
                        let op = ins.op.as_str();
                        let r = &th.regs;
                        let w32 = op.ends_with("32") && !op.ends_with("f32")
                            || op.ends_with(".u32")
                            || op.ends_with(".s32");
                        let mask = |x: u64| if w32 { x & 0xffff_ffff } else { x };
                        let out: u64 = match op {
                            "ld.param.u64" => {
                                let (_, sym) = addr(1, r);
                                let i: usize = sym.rsplit('_').next().unwrap().parse().unwrap();
                                ((params[i] as u64) + 1) << GLOBAL_SHIFT
                            }
                            "cvta.to.global.u64" | "mov.u64" | "mov.b64" | "mov.s64"
                            | "mov.u32" | "mov.b32" | "mov.s32" | "mov.f32" => mask(v(1, r)),
                            "ld.global.f32" => fb(*global(bufs, addr(1, r).0, name)),
                            // Two consecutive f32 slots' bits, little-endian
                            // (the dropout keys).
                            "ld.global.u64" => {
                                let a = addr(1, r).0;
                                assert!(a % 8 == 0, "{name}: misaligned ld.global.u64");
                                let lo = u64::from(global(bufs, a, name).to_bits());
                                let hi = u64::from(global(bufs, a + 4, name).to_bits());
                                lo | hi << 32
                            }
                            "ld.shared.f32" => fb(*shared_at(&mut shared, addr(1, r).0, name)),
                            "add.s32" | "add.s64" => mask(v(1, r).wrapping_add(v(2, r))),
                            "sub.s32" | "sub.u32" | "sub.s64" | "sub.u64" => {
                                mask(v(1, r).wrapping_sub(v(2, r)))
                            }
                            "mul.lo.s32" | "mul.lo.u32" | "mul.lo.s64" | "mul.lo.u64" => {
                                mask(v(1, r).wrapping_mul(v(2, r)))
                            }
                            "mad.lo.s32" | "mad.lo.u32" | "mad.lo.s64" => {
                                mask(v(1, r).wrapping_mul(v(2, r)).wrapping_add(v(3, r)))
                            }
                            "mul.hi.u32" => {
                                ((v(1, r) & 0xffff_ffff) * (v(2, r) & 0xffff_ffff)) >> 32
                            }
                            "mul.hi.u64" => {
                                ((u128::from(v(1, r)) * u128::from(v(2, r))) >> 64) as u64
                            }
                            "mul.wide.u32" => (v(1, r) & 0xffff_ffff) * (v(2, r) & 0xffff_ffff),
                            "mad.wide.s32" => (sx32(v(1, r)).wrapping_mul(sx32(v(2, r))) as u64)
                                .wrapping_add(v(3, r)),
                            "shr.u32" | "shr.u64" => mask(v(1, r)) >> v(2, r),
                            "shl.b64" => v(1, r) << v(2, r),
                            "and.b32" | "and.b64" => mask(v(1, r) & v(2, r)),
                            "xor.b64" => v(1, r) ^ v(2, r),
                            "div.u64" => v(1, r) / v(2, r),
                            "rem.u64" => v(1, r) % v(2, r),
                            "cvt.u64.u32" => v(1, r) & 0xffff_ffff,
                            "cvt.rn.f32.s32" => fb(sx32(v(1, r)) as f32),
                            "cvt.rn.f32.s64" => fb(v(1, r) as i64 as f32),
                            "cvt.rzi.s32.f32" => (f(v(1, r)) as i32 as u32).into(),
                            "cvt.rzi.s64.f32" => f(v(1, r)) as i64 as u64,
                            "cvt.rna.tf32.f32" => fb(tf32(f(v(1, r)))),
                            "and.pred" => u64::from(v(1, r) != 0 && v(2, r) != 0),
                            "selp.f32" => {
                                if v(3, r) != 0 {
                                    v(1, r)
                                } else {
                                    v(2, r)
                                }
                            }
                            _ if op.starts_with("setp.") => {
                                let parts: Vec<&str> = op.split('.').collect();
                                let (cmp, ty) = (parts[1], *parts.last().unwrap());
                                let (a, b) = (v(1, r), v(2, r));
                                let ord = match ty {
                                    "f32" => f(a).partial_cmp(&f(b)),
                                    "s32" => Some(sx32(a).cmp(&sx32(b))),
                                    "u32" => Some((a as u32).cmp(&(b as u32))),
                                    "s64" => Some((a as i64).cmp(&(b as i64))),
                                    "u64" => Some(a.cmp(&b)),
                                    _ => panic!("{name}: {op}"),
                                };
                                use std::cmp::Ordering::*;
                                let holds = match (cmp, ord) {
                                    (_, None) => false,
                                    ("lt", Some(o)) => o == Less,
                                    ("le", Some(o)) => o != Greater,
                                    ("gt", Some(o)) => o == Greater,
                                    ("ge", Some(o)) => o != Less,
                                    ("ne", Some(o)) => o != Equal,
                                    ("eq", Some(o)) => o == Equal,
                                    _ => panic!("{name}: {op}"),
                                };
                                let and = parts.get(2) == Some(&"and");
                                u64::from(holds && (!and || v(3, r) != 0))
                            }
                            "add.rn.f32" => fb(f(v(1, r)) + f(v(2, r))),
                            "sub.rn.f32" => fb(f(v(1, r)) - f(v(2, r))),
                            "mul.rn.f32" => fb(f(v(1, r)) * f(v(2, r))),
                            "div.rn.f32" => fb(f(v(1, r)) / f(v(2, r))),
                            "fma.rn.f32" => fb(f(v(1, r)).mul_add(f(v(2, r)), f(v(3, r)))),
                            "max.f32" => fb(f(v(1, r)).max(f(v(2, r)))),
                            "min.f32" => fb(f(v(1, r)).min(f(v(2, r)))),
                            "neg.f32" => fb(-f(v(1, r))),
                            "abs.f32" => fb(f(v(1, r)).abs()),
                            "sqrt.rn.f32" => fb(f(v(1, r)).sqrt()),
                            "ex2.approx.f32" => fb(f(v(1, r)).exp2()),
                            "lg2.approx.f32" => fb(f(v(1, r)).log2()),
                            "copysign.f32" => fb(f(v(2, r)).copysign(f(v(1, r)))),
                            _ => panic!("{name}: unsupported `{op}`"),
                        };
                        th.regs[d] = out;
                    }
                }
                // Every lane of a warp that reached an `mma.sync` waits
                // for the others (the kernels' control flow is uniform).
                if threads.iter().any(|t| t.at_mma) {
                    for warp in threads.chunks_mut(32) {
                        let pc = warp[0].pc;
                        assert!(
                            warp.iter().all(|t| t.at_mma && t.pc == pc),
                            "{name}: a warp diverges at mma.sync"
                        );
                        mma(&e.code[pc], warp);
                        for t in warp {
                            t.at_mma = false;
                            t.pc += 1;
                        }
                    }
                }
            }
        }
    }
}

fn global<'a>(bufs: &'a mut [Vec<f32>], a: u64, name: &str) -> &'a mut f32 {
    let b = (a >> GLOBAL_SHIFT) as usize;
    let off = a & ((1 << GLOBAL_SHIFT) - 1);
    assert!(
        b >= 1 && b <= bufs.len() && off % 4 == 0,
        "{name}: bad global address {a:#x}"
    );
    let len = bufs[b - 1].len();
    bufs[b - 1].get_mut((off / 4) as usize).unwrap_or_else(|| {
        panic!(
            "{name}: element {} outside buffer {} of {len}",
            off / 4,
            b - 1
        )
    })
}

fn shared_at<'a>(shared: &'a mut HashMap<u64, Vec<f32>>, a: u64, name: &str) -> &'a mut f32 {
    let base = a & !0xffff_ffff;
    let off = a & 0xffff_ffff;
    let s = shared
        .get_mut(&base)
        .unwrap_or_else(|| panic!("{name}: bad shared address {a:#x}"));
    s.get_mut((off / 4) as usize)
        .unwrap_or_else(|| panic!("{name}: shared element {} outside its array", off / 4))
}
