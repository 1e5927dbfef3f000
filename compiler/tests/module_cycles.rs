//! No module of `netc-compiler` depends on itself through another: among
//! the children of each module (the crate's top-level modules, the files
//! of `opt/`, of `codegen/cpu/`, …) the `crate::`/`super::` references
//! must form a DAG. A reference from a file counts for its ancestor that
//! is a sibling of the referenced module's ancestor; references between a
//! module and its own descendants are structure, not dependencies.
//!
//! Reads the sources as text: comments are skipped, `use` groups are
//! expanded one level (enough to name the module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(root: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut m: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
        m.pop();
    }
    m
}

fn ident_at(s: &str, i: usize) -> Option<(String, usize)> {
    let end = s[i..]
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(s.len(), |e| i + e);
    (end > i).then(|| (s[i..end].to_string(), end))
}

/// Every path `crate::a::b…` or `super::…` in `src` (comments removed),
/// resolved against `module`; `use` groups contribute one path per item.
fn references(module: &ModPath, src: &str) -> Vec<ModPath> {
    let text: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(start).map(|p| p + from) {
            from = pos + start.len();
            if pos > 0 && (bytes[pos - 1].is_ascii_alphanumeric() || bytes[pos - 1] == b'_') {
                continue;
            }
            let mut path: ModPath = if start == "super::" {
                module[..module.len().saturating_sub(1)].to_vec()
            } else {
                vec![]
            };
            let mut i = pos + start.len();
            loop {
                if text[i..].starts_with('{') {
                    let close = text[i..].find('}').map_or(text.len(), |c| i + c);
                    for item in text[i + 1..close].split(',') {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        let first = first.trim_start_matches('{');
                        if !first.is_empty() && first != "self" {
                            let mut p = path.clone();
                            p.push(first.to_string());
                            out.push(p);
                        }
                    }
                    break;
                }
                let Some((id, end)) = ident_at(&text, i) else {
                    break;
                };
                if id == "super" {
                    path.pop();
                } else {
                    path.push(id);
                }
                i = end;
                if text[i..].starts_with("::") {
                    i += 2;
                } else {
                    break;
                }
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn no_module_depends_on_itself() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(&root, f)).collect();
    // (from, to) between siblings, with one example reference each.
    let mut edges: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
    for f in &files {
        let m = module_of(&root, f);
        let src = std::fs::read_to_string(f).unwrap();
        for r in references(&m, &src) {
            let Some(target) = (0..=r.len())
                .rev()
                .map(|k| r[..k].to_vec())
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue;
            }
            let (a, b) = (m[..=common].to_vec(), target[..=common].to_vec());
            edges
                .entry((a, b))
                .or_insert_with(|| format!("{} -> {}", m.join("/"), r.join("::")));
        }
    }
    // Depth-first search for a back edge.
    let mut succ: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        succ.entry(a).or_default().push(b);
    }
    let mut state: BTreeMap<&ModPath, u8> = BTreeMap::new(); // 1 open, 2 done
    let mut cycles = Vec::new();
    for &start in succ.keys() {
        if state.contains_key(start) {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state.insert(start, 1);
        while let Some((v, i)) = stack.pop() {
            let next = succ.get(v).and_then(|s| s.get(i)).copied();
            let Some(w) = next else {
                state.insert(v, 2);
                continue;
            };
            stack.push((v, i + 1));
            match state.get(w) {
                None => {
                    state.insert(w, 1);
                    stack.push((w, 0));
                }
                Some(1) => {
                    let from = stack.iter().position(|(n, _)| *n == w).unwrap_or(0);
                    let ring: Vec<&ModPath> = stack[from..].iter().map(|(n, _)| *n).collect();
                    let mut lines = Vec::new();
                    for k in 0..ring.len() {
                        let key = (ring[k].clone(), ring[(k + 1) % ring.len()].clone());
                        lines.push(format!("    {}", edges[&key]));
                    }
                    cycles.push(lines.join("\n"));
                }
                _ => {}
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "module cycles in netc-compiler (one reference per edge):\n{}",
        cycles.join("\n  --\n")
    );
}
