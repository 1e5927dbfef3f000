//! Binding a layer call's arguments (positional and named) to the layer's
//! parameters, with typed getters. Every problem becomes a diagnostic and
//! the getter returns a fallback, so checking goes on and reports
//! everything in one run.

use netc_lang::ast::{Arg, Value, ValueKind};
use netc_lang::{did_you_mean, Diagnostic, Span};

/// A layer call's arguments bound to names.
pub(crate) struct Args<'a> {
    layer: &'a str,
    span: Span,
    bound: Vec<(&'static str, &'a Value)>,
    /// Positional names, for merge layers (`add(a, b)`), in order.
    pub tensors: Vec<(&'a str, Span)>,
    /// Whether any argument was malformed.
    pub failed: bool,
    /// Whether an unknown argument name was given; a "missing argument"
    /// error would then most likely repeat the same typo.
    unknown: bool,
}

impl<'a> Args<'a> {
    /// Binds `args` to `params` (positional in order, or by name).
    /// With `tensor_positionals`, positional names are tensor operands.
    pub fn bind(
        layer: &'a str,
        span: Span,
        params: &[&'static str],
        tensor_positionals: bool,
        args: &'a [Arg],
        diags: &mut Vec<Diagnostic>,
    ) -> Self {
        let mut out = Args {
            layer,
            span,
            bound: Vec::new(),
            tensors: Vec::new(),
            failed: false,
            unknown: false,
        };
        let mut next_pos = 0;
        for a in args {
            let name: &'static str = match &a.name {
                Some(n) => match params.iter().find(|p| **p == n.name) {
                    Some(p) => p,
                    None => {
                        let mut d = Diagnostic::error(
                            "E0102",
                            format!("`{layer}` has no argument `{}`", n.name),
                            n.span,
                        )
                        .with_label("unknown argument");
                        if let Some(s) = did_you_mean(&n.name, params.iter().copied()) {
                            d = d.with_note(format!("help: did you mean `{s}`?"));
                        }
                        d = d.with_note(accepted(layer, params));
                        diags.push(d);
                        out.failed = true;
                        out.unknown = true;
                        continue;
                    }
                },
                None => {
                    if tensor_positionals {
                        if let ValueKind::Ident(s) = &a.value.kind {
                            out.tensors.push((s, a.value.span));
                            continue;
                        }
                        diags.push(
                            Diagnostic::error(
                                "E0104",
                                format!(
                                    "`{layer}` takes tensors by name, found {}",
                                    a.value.kind.describe()
                                ),
                                a.value.span,
                            )
                            .with_label("expected the name of a tensor"),
                        );
                        out.failed = true;
                        continue;
                    }
                    match params.get(next_pos) {
                        Some(p) => {
                            next_pos += 1;
                            p
                        }
                        None => {
                            diags.push(
                                Diagnostic::error(
                                    "E0106",
                                    format!(
                                        "`{layer}` takes at most {} positional argument{}",
                                        params.len(),
                                        if params.len() == 1 { "" } else { "s" }
                                    ),
                                    a.span,
                                )
                                .with_label("unexpected argument")
                                .with_note(accepted(layer, params)),
                            );
                            out.failed = true;
                            continue;
                        }
                    }
                }
            };
            if let Some((_, prev)) = out.bound.iter().find(|(n, _)| *n == name) {
                diags.push(
                    Diagnostic::error(
                        "E0106",
                        format!("argument `{name}` of `{layer}` is given twice"),
                        a.span,
                    )
                    .with_label("second value")
                    .with_secondary(prev.span, "first value"),
                );
                out.failed = true;
                continue;
            }
            out.bound.push((name, &a.value));
        }
        out
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.bound.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn missing(&mut self, name: &str, diags: &mut Vec<Diagnostic>) {
        self.failed = true;
        if self.unknown {
            return;
        }
        diags.push(
            Diagnostic::error(
                "E0103",
                format!("`{}` needs argument `{name}`", self.layer),
                self.span,
            )
            .with_label(format!("`{name}` is missing")),
        );
        self.failed = true;
    }

    fn wrong(&mut self, name: &str, want: &str, v: &Value, diags: &mut Vec<Diagnostic>) {
        diags.push(
            Diagnostic::error(
                "E0104",
                format!(
                    "argument `{name}` of `{}` must be {want}, found {}",
                    self.layer,
                    v.kind.describe()
                ),
                v.span,
            )
            .with_label(format!("expected {want}")),
        );
        self.failed = true;
    }

    /// Reports an argument whose type is right but whose value is not
    /// (E0105), saying `why`.
    pub(crate) fn bad_value(
        &mut self,
        name: &str,
        why: String,
        v: &Value,
        diags: &mut Vec<Diagnostic>,
    ) {
        diags.push(
            Diagnostic::error(
                "E0105",
                format!("invalid `{name}` for `{}`: {why}", self.layer),
                v.span,
            )
            .with_label(why),
        );
        self.failed = true;
    }

    /// A positive integer (≥ `min`).
    pub fn count(
        &mut self,
        name: &str,
        default: Option<usize>,
        min: usize,
        diags: &mut Vec<Diagnostic>,
    ) -> usize {
        let fallback = default.unwrap_or(min.max(1));
        let Some(v) = self.get(name) else {
            if default.is_none() {
                self.missing(name, diags);
            }
            return fallback;
        };
        match v.kind {
            ValueKind::Int(i) if i >= min as i64 && i <= crate::shape::MAX_DIM as i64 => i as usize,
            ValueKind::Int(i) => {
                let why = if i < min as i64 {
                    format!("{i} is less than {min}")
                } else {
                    format!("{i} is larger than the limit {}", crate::shape::MAX_DIM)
                };
                self.bad_value(name, why, v, diags);
                fallback
            }
            _ => {
                self.wrong(name, "an integer", v, diags);
                fallback
            }
        }
    }

    /// An integer or a two-element list `[h, w]` (each ≥ `min`).
    pub fn pair(
        &mut self,
        name: &str,
        default: Option<(usize, usize)>,
        min: usize,
        diags: &mut Vec<Diagnostic>,
    ) -> (usize, usize) {
        let fallback = default.unwrap_or((min.max(1), min.max(1)));
        let Some(v) = self.get(name) else {
            if default.is_none() {
                self.missing(name, diags);
            }
            return fallback;
        };
        let one = |x: &Value| match x.kind {
            ValueKind::Int(i) if i >= min as i64 && i <= crate::shape::MAX_DIM as i64 => {
                Some(i as usize)
            }
            _ => None,
        };
        let got = match &v.kind {
            ValueKind::Int(_) => one(v).map(|i| (i, i)),
            ValueKind::List(items) if items.len() == 2 => one(&items[0]).zip(one(&items[1])),
            _ => None,
        };
        match got {
            Some(p) => p,
            None => {
                // Name the bound an integer broke: "expected ≥ 0" alone
                // does not explain why 10^12 is refused.
                let ints: Vec<i64> = match &v.kind {
                    ValueKind::Int(i) => vec![*i],
                    ValueKind::List(items) if items.len() == 2 => items
                        .iter()
                        .filter_map(|x| match x.kind {
                            ValueKind::Int(i) => Some(i),
                            _ => None,
                        })
                        .collect(),
                    _ => vec![],
                };
                let limit = crate::shape::MAX_DIM;
                if let Some(i) = ints.iter().find(|i| **i > limit as i64) {
                    self.bad_value(
                        name,
                        format!("{i} is larger than the limit {limit} (2^24)"),
                        v,
                        diags,
                    );
                } else if let Some(i) = ints.iter().find(|i| **i < min as i64) {
                    self.bad_value(name, format!("{i} is less than {min}"), v, diags);
                } else if matches!(v.kind, ValueKind::Int(_) | ValueKind::List(_)) {
                    self.bad_value(
                        name,
                        format!("expected an integer ≥ {min} or a list [h, w] of them"),
                        v,
                        diags,
                    );
                } else {
                    self.wrong(name, "an integer or [h, w]", v, diags);
                }
                fallback
            }
        }
    }

    /// A number in the closed `range` (integers are accepted as numbers).
    pub fn number(
        &mut self,
        name: &str,
        default: Option<f64>,
        range: (f64, f64),
        diags: &mut Vec<Diagnostic>,
    ) -> f64 {
        let bound = crate::bound::Bound {
            min: range.0,
            min_open: false,
            max: range.1,
            max_open: false,
            why: "",
        };
        self.bounded(name, default, &bound, diags)
    }

    /// A number that `bound` admits (integers are accepted as numbers).
    pub fn bounded(
        &mut self,
        name: &str,
        default: Option<f64>,
        bound: &crate::bound::Bound,
        diags: &mut Vec<Diagnostic>,
    ) -> f64 {
        let fallback = default.unwrap_or(bound.min);
        let Some(v) = self.get(name) else {
            if default.is_none() {
                self.missing(name, diags);
            }
            return fallback;
        };
        let x = match v.kind {
            ValueKind::Float(f) => f,
            ValueKind::Int(i) => i as f64,
            _ => {
                self.wrong(name, "a number", v, diags);
                return fallback;
            }
        };
        if !bound.admits(x) {
            let why = if bound.why.is_empty() {
                String::new()
            } else {
                format!(": {}", bound.why)
            };
            self.bad_value(name, format!("{x} is outside {bound}{why}"), v, diags);
            return fallback;
        }
        x
    }

    /// `true` or `false`.
    pub fn flag(&mut self, name: &str, default: bool, diags: &mut Vec<Diagnostic>) -> bool {
        match self.get(name) {
            None => default,
            Some(Value {
                kind: ValueKind::Bool(b),
                ..
            }) => *b,
            Some(v) => {
                self.wrong(name, "`true` or `false`", v, diags);
                default
            }
        }
    }

    /// One of a fixed set of names.
    pub fn choice(
        &mut self,
        name: &str,
        options: &[&'static str],
        default: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> &'static str {
        let Some(v) = self.get(name) else {
            return default;
        };
        match &v.kind {
            ValueKind::Ident(s) => match options.iter().find(|o| **o == s) {
                Some(o) => o,
                None => {
                    let mut why = format!("expected one of {}", options.join(", "));
                    if let Some(m) = did_you_mean(s, options.iter().copied()) {
                        why = format!("{why} (did you mean `{m}`?)");
                    }
                    self.bad_value(name, why, v, diags);
                    default
                }
            },
            _ => {
                self.wrong(name, &format!("one of {}", options.join(", ")), v, diags);
                default
            }
        }
    }

    /// The raw value, for arguments with several accepted forms (padding).
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.get(name)
    }

    /// Reports a malformed value of an argument read with [`Args::raw`].
    pub fn reject(&mut self, name: &str, want: &str, v: &Value, diags: &mut Vec<Diagnostic>) {
        self.wrong(name, want, v, diags);
    }
}

fn accepted(layer: &str, params: &[&str]) -> String {
    if params.is_empty() {
        format!("`{layer}` takes no arguments")
    } else {
        format!("`{layer}` accepts: {}", params.join(", "))
    }
}

/// E0302: a `train` setting `key` whose value `v` is not `want` (the
/// training-section and text-settings checkers share it).
pub(crate) fn setting_type_error(key: &str, want: &str, v: &Value) -> Diagnostic {
    Diagnostic::error(
        "E0302",
        format!(
            "setting `{key}` must be {want}, found {}",
            v.kind.describe()
        ),
        v.span,
    )
    .with_label(format!("expected {want}"))
}
