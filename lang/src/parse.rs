//! pest parse tree → AST. Never panics: any input yields a `File` or
//! diagnostics saying where and what was expected.

use crate::ast::*;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::span::Span;
use pest::iterators::Pair;
use pest::Parser;
use pest_derive::Parser;

#[derive(Parser)]
#[grammar = "grammar.pest"]
struct NetParser;

/// How deeply brackets may nest. Real programs need 2 or 3 levels; the limit
/// keeps adversarial input from exhausting the stack.
const MAX_NESTING: usize = 64;

/// The UTF-8 byte order mark some Windows editors put at the start of a file.
const BOM: char = '\u{feff}';

/// Decodes a file's bytes; invalid UTF-8 is a diagnostic at the bad byte.
/// A leading byte order mark is dropped (it is not part of the text, and
/// would shift every column of the first line).
pub fn decode(bytes: &[u8]) -> Result<&str, Diagnostics> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        Diagnostics(vec![Diagnostic::error(
            "E0001",
            "source is not valid UTF-8",
            Span::new(at, at + e.error_len().unwrap_or(0)),
        )
        .with_label(format!("invalid byte 0x{:02x}", bytes[at]))])
    })?;
    Ok(text.strip_prefix(BOM).unwrap_or(text))
}

/// Parses a `.net` source text.
/// A leading byte order mark is read as whitespace, so that text which
/// did not go through [`decode`] parses too, with the same spans.
pub fn parse(src: &str) -> Result<File, Diagnostics> {
    let Some(rest) = src.strip_prefix(BOM) else {
        return parse_text(src);
    };
    // Three spaces for the mark's three bytes keep every span's offset; a
    // span that would start or end inside the mark moves past it, onto a
    // char boundary of `src`.
    let len = BOM.len_utf8();
    parse_text(&format!("{}{rest}", " ".repeat(len))).map_err(|mut d| {
        let past = |at: usize| if at == 0 || at >= len { at } else { len };
        for l in d.0.iter_mut().flat_map(|d| d.labels.iter_mut()) {
            l.span = Span::new(past(l.span.start), past(l.span.end));
        }
        d
    })
}

fn parse_text(src: &str) -> Result<File, Diagnostics> {
    check_nesting(src)?;
    pest::set_error_detail(true);
    let mut pairs = NetParser::parse(Rule::file, src).map_err(|e| syntax_error(src, e))?;
    let mut file = File::default();
    let root = pairs.next().into_iter().flat_map(|p| p.into_inner());
    let mut errors = Vec::new();
    for item in root {
        match item.as_rule() {
            Rule::model => file.models.push(model(item, &mut errors)),
            Rule::train => file.trains.push(train(item, &mut errors)),
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(Diagnostics(errors))
    }
}

fn check_nesting(src: &str) -> Result<(), Diagnostics> {
    let mut depth = 0usize;
    for (i, c) in src.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostics(vec![Diagnostic::error(
                        "E0003",
                        format!("brackets nest more than {MAX_NESTING} levels deep"),
                        Span::new(i, i + 1),
                    )
                    .with_label("too deep")]));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn describe_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::model => "`model`",
        Rule::train => "`train`",
        Rule::input_decl => "`input`",
        Rule::output_decl => "`output`",
        Rule::binding => "a binding `name = ...`",
        Rule::pipeline | Rule::stage => "a layer or a name",
        Rule::alias => "`as`",
        Rule::args => "`(`",
        Rule::arg | Rule::named_arg => "an argument",
        Rule::setting => "a setting `key: value`",
        Rule::value | Rule::call => "a value",
        Rule::list => "`[`",
        Rule::tokens => "`tokens`",
        Rule::boolean => "`true` or `false`",
        Rule::string => "a string",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::ident => "a name",
        Rule::EOI => "end of file",
        _ => return None,
    })
}

fn syntax_error(src: &str, e: pest::error::Error<Rule>) -> Diagnostics {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = Vec::new();
    let mut at = pos;
    if let Some(attempts) = e.parse_attempts() {
        at = attempts.max_position.max(pos);
        for t in attempts.expected_tokens() {
            // `ParsingToken` is not exported; its Display is the literal for
            // string tokens, `a..z` for ranges and BUILTIN_RULE otherwise.
            let token = t.to_string();
            let is_range = token.chars().count() == 4 && token.contains("..");
            // Comment openers and `_` (an identifier's first character) are
            // possible everywhere and only clutter the message.
            let noise = matches!(token.as_str(), "BUILTIN_RULE" | "#" | "//" | "/*" | "_");
            if !noise && !is_range && !token.trim().is_empty() {
                expected.push(format!("`{token}`"));
            }
        }
    }
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        for r in positives {
            if let Some(d) = describe_rule(*r) {
                expected.push(d.to_string());
            }
        }
    }
    expected.sort();
    expected.dedup();
    let found = found_token(src, at);
    let message = if expected.is_empty() {
        format!("syntax error: unexpected {found}")
    } else {
        format!(
            "syntax error: expected {}, found {found}",
            join_or(&expected)
        )
    };
    let end = (at + src[at..].chars().next().map_or(0, char::len_utf8)).min(src.len());
    Diagnostics(vec![Diagnostic::error(
        "E0002",
        message,
        Span::new(at, end),
    )
    .with_label("unexpected here")])
}

fn found_token(src: &str, at: usize) -> String {
    let rest = &src[at.min(src.len())..];
    let tok: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace())
        .take(16)
        .collect();
    // A control character (NUL, ESC) would reach the terminal raw.
    let tok = crate::diagnostic::escape_controls(&tok);
    if tok.is_empty() {
        if rest.is_empty() {
            "end of file".into()
        } else {
            "a line break".into()
        }
    } else {
        format!("`{tok}`")
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A pair's span without trailing whitespace: pest's implicit whitespace
/// before an optional or repeated tail (`args?`, `("->" ~ stage)*`) stays
/// consumed, so rules that can end in one end where their last child ends.
fn span(p: &Pair<Rule>) -> Span {
    let own = Span::new(p.as_span().start(), p.as_span().end());
    let trailing_tail = matches!(
        p.as_rule(),
        Rule::pipeline | Rule::stage | Rule::output_decl | Rule::binding
    );
    match p.clone().into_inner().last() {
        Some(last) if trailing_tail => Span::new(own.start, span(&last).end),
        _ => own,
    }
}

fn ident(p: Pair<Rule>) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span(&p),
    }
}

fn model(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Model {
    let sp = span(&p);
    let mut inner = p.into_inner();
    let name = inner.next().map(ident).unwrap_or_else(|| missing(sp));
    let statements: Vec<Statement> = inner.map(|s| statement(s, errors)).collect();
    duplicate_outputs(&statements, errors);
    Model {
        name,
        statements,
        span: sp,
    }
}

/// Reports a name listed twice among a model's outputs (in one `output`
/// statement or several): the model would return one tensor twice, and
/// files written per output would overwrite each other.
fn duplicate_outputs(statements: &[Statement], errors: &mut Vec<Diagnostic>) {
    let mut seen: std::collections::HashMap<&str, Span> = std::collections::HashMap::new();
    for s in statements {
        let Statement::Output { names, .. } = s else {
            continue;
        };
        for n in names {
            match seen.get(n.name.as_str()) {
                Some(first) => errors.push(
                    Diagnostic::error(
                        "E0111",
                        format!("`{}` is listed twice as an output", n.name),
                        n.span,
                    )
                    .with_label("listed again here")
                    .with_secondary(*first, "first listed here"),
                ),
                None => {
                    seen.insert(&n.name, n.span);
                }
            }
        }
    }
}

/// Placeholder for a child the grammar guarantees; unreachable in practice
/// but keeps the builder total.
fn missing(at: Span) -> Ident {
    Ident {
        name: String::new(),
        span: at,
    }
}

fn statement(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Statement {
    let sp = span(&p);
    match p.as_rule() {
        Rule::input_decl => {
            let mut inner = p.into_inner().peekable();
            let name = inner.next().map(ident).unwrap_or_else(|| missing(sp));
            let tokens = inner.next_if(|q| q.as_rule() == Rule::tokens).is_some();
            let shape = inner
                .next()
                .map(|v| list_value(v, errors))
                .unwrap_or(Value {
                    kind: ValueKind::List(vec![]),
                    span: sp,
                });
            Statement::Input {
                name,
                tokens,
                shape,
                span: sp,
            }
        }
        Rule::output_decl => Statement::Output {
            names: p.into_inner().map(ident).collect(),
            span: sp,
        },
        Rule::binding => {
            let mut inner = p.into_inner();
            let name = inner.next().map(ident).unwrap_or_else(|| missing(sp));
            let pipeline = inner
                .next()
                .map(|p| pipeline(p, errors))
                .unwrap_or(Pipeline {
                    stages: vec![],
                    span: sp,
                });
            Statement::Bind {
                name,
                pipeline,
                span: sp,
            }
        }
        _ => Statement::Pipeline(pipeline(p, errors)),
    }
}

fn pipeline(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Pipeline {
    let sp = span(&p);
    Pipeline {
        stages: p.into_inner().map(|s| stage(s, errors)).collect(),
        span: sp,
    }
}

fn stage(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Stage {
    let sp = span(&p);
    let mut name = missing(sp);
    let mut args = None;
    let mut alias = None;
    for c in p.into_inner() {
        match c.as_rule() {
            Rule::ident => name = ident(c),
            Rule::args => args = Some(arg_list(c, errors)),
            Rule::alias => alias = c.into_inner().next().map(ident),
            _ => {}
        }
    }
    Stage {
        name,
        args,
        alias,
        span: sp,
    }
}

fn arg_list(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Vec<Arg> {
    p.into_inner()
        .map(|a| {
            let sp = span(&a);
            let inner = a.into_inner().next();
            match inner {
                Some(n) if n.as_rule() == Rule::named_arg => {
                    let mut parts = n.into_inner();
                    let name = parts.next().map(ident);
                    let value = parts.next().map(|v| value(v, errors)).unwrap_or(Value {
                        kind: ValueKind::List(vec![]),
                        span: sp,
                    });
                    Arg {
                        name,
                        value,
                        span: sp,
                    }
                }
                Some(v) => Arg {
                    name: None,
                    value: value(v, errors),
                    span: sp,
                },
                None => Arg {
                    name: None,
                    value: Value {
                        kind: ValueKind::List(vec![]),
                        span: sp,
                    },
                    span: sp,
                },
            }
        })
        .collect()
}

fn list_value(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Value {
    let sp = span(&p);
    Value {
        kind: ValueKind::List(p.into_inner().map(|v| value(v, errors)).collect()),
        span: sp,
    }
}

fn value(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Value {
    // `value` wraps exactly one alternative; unwrap it.
    let p = if p.as_rule() == Rule::value {
        match p.into_inner().next() {
            Some(inner) => inner,
            None => {
                return Value {
                    kind: ValueKind::List(vec![]),
                    span: Span::default(),
                }
            }
        }
    } else {
        p
    };
    let sp = span(&p);
    let text = p.as_str();
    let kind = match p.as_rule() {
        Rule::int => match text.parse::<i64>() {
            Ok(i) => ValueKind::Int(i),
            Err(_) => {
                errors.push(
                    Diagnostic::error("E0004", format!("integer `{text}` is out of range"), sp)
                        .with_label("does not fit in 64 bits"),
                );
                ValueKind::Int(0)
            }
        },
        Rule::float => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => ValueKind::Float(f),
            _ => {
                errors.push(
                    Diagnostic::error("E0004", format!("number `{text}` is out of range"), sp)
                        .with_label("not a finite 64-bit float"),
                );
                ValueKind::Float(0.0)
            }
        },
        Rule::boolean => ValueKind::Bool(text == "true"),
        Rule::string => ValueKind::Str(text[1..text.len() - 1].to_string()),
        Rule::ident => ValueKind::Ident(text.to_string()),
        Rule::any_len => ValueKind::Any,
        Rule::list => return list_value(p, errors),
        Rule::call => {
            let mut inner = p.into_inner();
            let name = inner.next().map(ident).unwrap_or_else(|| missing(sp));
            let args = inner
                .next()
                .map(|a| arg_list(a, errors))
                .unwrap_or_default();
            ValueKind::Call { name, args }
        }
        _ => ValueKind::List(vec![]),
    };
    Value { kind, span: sp }
}

fn train(p: Pair<Rule>, errors: &mut Vec<Diagnostic>) -> Train {
    let sp = span(&p);
    let mut inner = p.into_inner();
    let model = inner.next().map(ident).unwrap_or_else(|| missing(sp));
    let settings = inner
        .filter(|s| s.as_rule() == Rule::setting)
        .map(|s| {
            let ssp = span(&s);
            let mut parts = s.into_inner();
            let key = parts.next().map(ident).unwrap_or_else(|| missing(ssp));
            let value = parts.next().map(|v| value(v, errors)).unwrap_or(Value {
                kind: ValueKind::List(vec![]),
                span: ssp,
            });
            Setting {
                key,
                value,
                span: ssp,
            }
        })
        .collect();
    Train {
        model,
        settings,
        span: sp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_whitespace_with_the_same_offsets() {
        let text = "model m { input x: [4] x -> y output y }";
        let marked = format!("\u{feff}{text}");
        assert_eq!(decode(marked.as_bytes()).ok(), Some(text));
        let a = parse(&marked).unwrap();
        let b = parse(&format!("   {text}")).unwrap();
        assert_eq!(a, b);
        // Errors never point inside the mark.
        for bad in ["\u{feff}}", "\u{feff}model", "\u{feff}\0"] {
            for d in parse(bad).unwrap_err().0 {
                let s = d.span();
                assert!(bad.is_char_boundary(s.start) && bad.is_char_boundary(s.end));
            }
        }
    }

    #[test]
    fn an_output_listed_twice_is_reported_at_its_second_mention() {
        let src = "model m { input x: [4] x -> y output y, x, y }";
        let d = parse(src).unwrap_err().0;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].message, "`y` is listed twice as an output");
        assert_eq!(&src[d[0].span().start..d[0].span().end], "y");
        assert_eq!(d[0].span().start, src.rfind('y').unwrap());
    }

    #[test]
    fn token_inputs_parse_and_print_back() {
        use crate::printer::print_file;
        let src = "model m {\n  input words: tokens[40]\n  input x: [4]\n  words -> embedding(100, 8) -> y\n  output y\n}\n";
        let f = parse(src).unwrap();
        let Statement::Input { tokens, .. } = &f.models[0].statements[0] else {
            panic!("not an input");
        };
        assert!(*tokens);
        let Statement::Input { tokens, .. } = &f.models[0].statements[1] else {
            panic!("not an input");
        };
        assert!(!*tokens);
        assert_eq!(print_file(&f), src);
        // `tokens` is not reserved, and needs a list after it.
        assert!(parse("model m { input tokens: tokens [3] tokens -> y output y }").is_ok());
        assert!(parse("model m { input x: tokens }").is_err());
        assert!(parse("model m { input x: tokensx[3] }").is_err());
    }
}
