//! Every complete example in the language reference is a real program:
//! each ```net block of docs/language.md parses and checks without errors.

mod common;

#[test]
fn every_net_block_in_the_language_reference_checks() {
    let doc = std::fs::read_to_string(common::root().join("docs/language.md")).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```net") => cur = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(cur.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 5, "found only {} net blocks", blocks.len());
    for b in &blocks {
        let checked = common::check_ok(b);
        assert!(!checked.graphs.is_empty());
        let warnings: Vec<_> = checked.diagnostics.iter().map(|d| &d.message).collect();
        assert!(warnings.is_empty(), "doc example warns: {warnings:?}\n{b}");
    }
}
