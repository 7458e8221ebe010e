//! The layering rule of ARCHITECTURE.md, checked: a module may import its own layer and the
//! layers below it, never one above, and the modules of one layer import each other without a
//! loop. Read from the `crate::` paths in `src/` (comments ignored), so it needs no build tooling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: [&str; 4] = ["base", "engine", "run", "commands"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Module {
    layer: usize,
    name: String,
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/engine/provider/openai.rs` is the module `engine::provider`; `src/engine/mod.rs` is the
/// layer itself (name ""); `src/lib.rs` and `src/main.rs` are above every layer.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).unwrap();
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
    let layer = rank(parts.first()?)?;
    let name = match parts.get(1) {
        None | Some(&"mod.rs") => String::new(),
        Some(p) => p.trim_end_matches(".rs").to_string(),
    };
    Some(Module { layer, name })
}

/// Every `crate::layer::module` named on a line that is not a comment.
fn references(text: &str) -> Vec<Module> {
    let re = regex::Regex::new(r"\bcrate::(\w+)(?:::(\w+))?").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" // ").next().unwrap_or(code);
        for c in re.captures_iter(code) {
            if let Some(layer) = rank(&c[1]) {
                let name = c.get(2).map_or("", |m| m.as_str()).to_string();
                out.push(Module { layer, name });
            }
        }
    }
    out
}

fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(from.clone()).or_default();
        for to in references(&text) {
            if to != from {
                deps.insert(to);
            }
        }
    }
    graph
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let mut upward = Vec::new();
    for (from, deps) in imports() {
        for to in deps.iter().filter(|to| to.layer > from.layer) {
            upward.push(format!(
                "{}::{} imports {}::{}",
                LAYERS[from.layer], from.name, LAYERS[to.layer], to.name
            ));
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up (see ARCHITECTURE.md):\n{}",
        upward.join("\n")
    );
}

#[test]
fn modules_of_one_layer_import_each_other_without_a_loop() {
    let graph = imports();
    // Depth-first search for a back edge, within each layer.
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.clone());
        let same_layer = graph
            .get(m)
            .into_iter()
            .flatten()
            .filter(|d| d.layer == m.layer);
        for dep in same_layer.filter(|d| !d.name.is_empty()) {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle
                .iter()
                .map(|m| format!("{}::{}", LAYERS[m.layer], m.name))
                .collect();
            panic!("import loop: {} -> (back to the first)", names.join(" -> "));
        }
    }
}

#[test]
fn the_check_sees_real_imports_and_skips_comments() {
    let refs = references("use crate::engine::provider::Request;\n// crate::commands::cli\n");
    assert_eq!(
        refs,
        vec![Module {
            layer: 1,
            name: "provider".into()
        }]
    );
    let graph = imports();
    assert!(
        graph.len() > 20,
        "the scan found only {} modules",
        graph.len()
    );
}

/// Functions outside tests longer than this many lines (from `fn` to its closing brace) are cut
/// into named steps; see ARCHITECTURE.md.
const LONGEST_FUNCTION: usize = 100;

/// `(lines, file, name)` of every function outside `mod tests` over [`LONGEST_FUNCTION`]. A
/// function ends at the first line that is its own indentation and `}` (rustfmt's layout).
fn long_functions() -> Vec<(usize, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let head = regex::Regex::new(r"^(\s*)(?:pub(?:\([a-z]+\))? )?(?:async )?fn (\w+)").unwrap();
    let mut long = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("mod tests") {
                break;
            }
            let Some(c) = head.captures(line) else {
                continue;
            };
            let close = format!("{}}}", &c[1]);
            let Some(end) = lines[i + 1..].iter().position(|l| *l == close) else {
                continue;
            };
            if end + 2 > LONGEST_FUNCTION {
                let name = file.strip_prefix(&src).unwrap().display().to_string();
                long.push((end + 2, name, c[2].to_string()));
            }
        }
    }
    long
}

#[test]
fn no_function_outside_tests_is_over_a_hundred_lines() {
    let long: Vec<String> = long_functions()
        .into_iter()
        .map(|(n, file, name)| format!("{file}: {name} is {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "cut these into named steps:\n{}",
        long.join("\n")
    );
}
