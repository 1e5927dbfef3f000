//! Every shipped example checks, and its AST, graph and summary text forms
//! are pinned by snapshots (one `.net` input → one reviewed snapshot each),
//! as are the kernel IR, CLIF and PTX of the course models.

mod common;
use common::*;

#[test]
fn netc_check_passes_on_every_example() {
    let files = net_files("examples");
    assert!(files.len() >= 10, "examples are missing: {files:?}");
    for f in files {
        let (code, out, err) = netc(&["check", &rel(&f)]);
        assert_eq!(code, 0, "{}: {err}", f.display());
        assert!(out.starts_with("ok: model"), "{out}");
        assert!(
            err.is_empty(),
            "{}: unexpected diagnostics\n{err}",
            f.display()
        );
    }
}

#[test]
fn summaries_show_the_published_parameter_counts() {
    for (file, total) in [
        ("course_cnn", "693,962"),
        ("course_lstm", "66,689"),
        ("lenet5", "61,706"),
        ("alexnet", "62,378,344"),
        ("vgg16", "138,357,544"),
        ("rnn_golden", "161"),
    ] {
        let (code, out, err) = netc(&["summary", &format!("examples/{file}.net")]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("Total params: {total} ")),
            "{file}: expected {total}\n{out}"
        );
    }
}

#[test]
fn snapshots_of_every_example() {
    for f in net_files("examples") {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(&f).unwrap();
        let ast = netc_lang::parse(&src).unwrap();
        insta::assert_snapshot!(format!("ast_{stem}"), netc_lang::printer::print_file(&ast));
        let checked = check_ok(&src);
        for g in &checked.graphs {
            let frozen = checked
                .train_for(&g.name)
                .map(|t| t.freeze.clone())
                .unwrap_or_default();
            insta::assert_snapshot!(
                format!("graph_{stem}"),
                netc_compiler::graph_text::graph_text(g)
            );
            insta::assert_snapshot!(
                format!("summary_{stem}"),
                netc_compiler::summary::summary(g, &frozen)
            );
        }
    }
}

#[test]
fn graph_dot_is_valid_looking_graphviz() {
    let (code, out, _) = netc(&["graph", "examples/residual_cnn.net", "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph \"residual_cnn\" {"));
    assert!(out.trim_end().ends_with('}'));
    // Every edge names declared nodes.
    for line in out.lines().filter(|l| l.contains("->")) {
        let (a, b) = line
            .trim()
            .trim_end_matches(';')
            .split_once(" -> ")
            .unwrap();
        assert!(out.contains(&format!("  {a} [")), "undeclared {a}");
        assert!(out.contains(&format!("  {b} [")), "undeclared {b}");
    }
}

#[test]
fn printed_ast_reparses_to_the_same_text() {
    for f in net_files("examples") {
        let src = std::fs::read_to_string(&f).unwrap();
        let printed = netc_lang::printer::print_file(&netc_lang::parse(&src).unwrap());
        let again = netc_lang::printer::print_file(&netc_lang::parse(&printed).unwrap());
        assert_eq!(printed, again, "{}", f.display());
    }
}

#[test]
fn kernel_ir_and_clif_snapshots_of_the_course_cnn() {
    let (code, kernels, err) = netc(&["compile", "examples/course_cnn.net", "--emit", "kernels"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!("kernels_course_cnn", kernels);
    let (code, clif, err) = netc(&["compile", "examples/course_cnn.net", "--emit", "clif"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        clif.contains("; kernel conv1") && clif.contains("fma"),
        "no vector FMA in conv1"
    );
    insta::assert_snapshot!("clif_course_cnn", clif);
}

#[test]
fn training_graph_snapshots_of_the_course_models() {
    for stem in ["course_cnn", "course_lstm"] {
        let file = format!("examples/{stem}.net");
        let (code, text, err) = netc(&["compile", &file, "--emit", "grad"]);
        assert_eq!(code, 0, "{err}");
        insta::assert_snapshot!(format!("grad_{stem}"), text);
    }
    // -O0 still unrolls the recurrent layer (training needs it) but fuses nothing.
    let (code, text, err) = netc(&[
        "-O0",
        "compile",
        "examples/course_lstm.net",
        "--emit",
        "grad",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("lstm_cell(") && text.contains("cell_grad("));
    assert!(!text.contains("activation: sigmoid"), "{text}");
}

#[test]
fn the_italy_power_lstm_trains_from_the_cli_with_and_without_the_optimizer() {
    for opt in ["-O1", "-O0"] {
        let (code, out, err) = netc(&[
            opt,
            "train",
            "examples/italy_power_lstm.net",
            "--epochs",
            "3",
            "--threads",
            "1",
        ]);
        assert_eq!(code, 0, "{err}");
        // Per-epoch lines are progress, on stderr.
        let losses: Vec<f64> = err
            .lines()
            .filter(|l| l.starts_with("epoch "))
            .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
            .collect();
        assert_eq!(losses.len(), 3, "{err}");
        assert!(losses[2] < losses[0], "{err}");
        assert!(out.contains("test: loss"), "{out}");
    }
}

#[test]
fn ptx_snapshots_of_the_course_cnn_and_lstm() {
    for stem in ["course_cnn", "course_lstm"] {
        let file = format!("examples/{stem}.net");
        let (code, ptx, err) = netc(&["compile", &file, "--emit", "ptx"]);
        assert_eq!(code, 0, "{err}");
        assert!(ptx.contains(".target sm_80") && ptx.contains(".visible .entry"));
        insta::assert_snapshot!(format!("ptx_{stem}"), ptx);
    }
    let (code, ptx, err) = netc(&["compile", "examples/course_cnn.net", "--emit", "ptx-train"]);
    assert_eq!(code, 0, "{err}");
    assert!(ptx.contains("_update_fc1_weight(") && ptx.contains("_grad_"));
}

/// `--tf32` is opt-in and GPU-only: at batch 256 the course CNN's `conv1`
/// (173056×32×9) is register tiled, and only with `--tf32` is it written
/// with TF32 `mma.sync`; on the CPU the flag is refused, not ignored.
#[test]
fn tf32_is_opt_in_and_only_for_the_gpu() {
    let args = [
        "compile",
        "examples/course_cnn.net",
        "--emit",
        "ptx",
        "--batch",
        "256",
    ];
    let (code, f32_ptx, err) = netc(&args);
    assert_eq!(code, 0, "{err}");
    let (code, tf32_ptx, err) = netc(&[&args[..], &["--tf32"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(!f32_ptx.contains("mma.sync"));
    assert_eq!(
        tf32_ptx
            .matches("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")
            .count(),
        8
    );
    assert!(tf32_ptx.contains("cvt.rna.tf32.f32"));
    let (code, _, err) = netc(&["bench", "examples/course_cnn.net", "--tf32"]);
    assert_ne!(code, 0);
    assert!(err.contains("--tf32 applies to the GPU only"), "{err}");
}

/// The parts of a training program's kernel IR that the text layers add:
/// its interface (inputs, params, outputs) and the kernels of the
/// embedding (gather, scatter-add gradient, update) and of the loss. The
/// whole program is hundreds of kilobytes of unrolled recurrent steps that
/// the course LSTM's snapshots already pin.
fn text_kernels(program: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in program.lines() {
        if let Some(rest) = line.strip_prefix("  kernel ") {
            let name = rest.split(' ').next().unwrap_or("");
            let base = name.rsplit(':').next().unwrap_or(name);
            keep = base == "emb" || base.starts_with("emb.") || name == "loss";
        } else if line.starts_with("  input ")
            || line.starts_with("  param ")
            || line.starts_with("  output ")
        {
            out.push_str(line);
            out.push('\n');
            continue;
        } else if !line.starts_with("    ") && line != "  }" {
            keep = false;
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn kernel_snapshots_of_the_text_examples() {
    for stem in ["char_autocomplete", "pos_tagger", "spam_classifier"] {
        let file = format!("examples/{stem}.net");
        let (code, text, err) = netc(&["compile", &file, "--emit", "kernels-train"]);
        assert_eq!(code, 0, "{err}");
        let kept = text_kernels(&text);
        assert!(
            kept.contains("kernel emb (loop)") && kept.contains("kernel grad:emb.weight"),
            "{stem}: no embedding kernels\n{kept}"
        );
        insta::assert_snapshot!(format!("text_kernels_{stem}"), kept);
    }
    // The forward program of the smallest one whole: gather, unrolled
    // LSTM steps, per-step dense and softmax.
    let (code, text, err) = netc(&["compile", "examples/char_autocomplete.net"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!("kernels_char_autocomplete", text);
}
