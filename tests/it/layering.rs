//! The core is layered: its modules' imports form no cycle, so any part can be read,
//! tested or moved with only what lies below it. Read from the source (`crate::<module>`
//! outside `#[cfg(test)]` and comments); the edge layer (`src/edge/`) is above all of it
//! and nothing in the core imports it.

use std::collections::{BTreeMap, BTreeSet};

fn core_imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = format!("{}/src", env!("CARGO_MANIFEST_DIR"));
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![std::path::PathBuf::from(&root)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("edge") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let module = relative
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = imports.entry(module.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    imports
}

/// A cycle through `start`, if its imports lead back to it.
fn cycle_from(
    imports: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in imports.get(path.last().unwrap()).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_string());
            return Some(cycle);
        }
        if path.contains(next) || !imports.contains_key(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(cycle) = cycle_from(imports, start, path) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}

#[test]
fn core_modules_import_without_cycles() {
    let imports = core_imports();
    assert!(imports.len() > 20, "read the core: {:?}", imports.keys());
    for module in imports.keys() {
        let cycle = cycle_from(&imports, module, &mut vec![module.clone()]);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" → ")
        );
    }
}

#[test]
fn the_core_never_imports_the_edge() {
    for (module, deps) in core_imports() {
        assert!(!deps.contains("edge"), "{module} imports the edge layer");
    }
}
