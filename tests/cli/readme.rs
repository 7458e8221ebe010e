//! The README check: every command marked `<!-- readme-check -->` (a fenced `sh` block after
//! the marker) runs on the mock with the binary under test, in order, in one folder holding a
//! copy of `samples/`, and each line of the next fenced block (the summary the README shows)
//! must be printed, in that order. Times, rates and latencies vary from run to run, so the
//! numbers of the `Time` and `Latency` lines are not compared; the program name of the `Next`
//! line is whatever ran it.

use std::path::Path;

use regex::Regex;

use crate::util::*;

/// One marked example: the command's words and the summary lines it must print.
#[derive(Debug)]
struct Example {
    command: Vec<String>,
    expected: Vec<String>,
}

/// The marker, on a line of its own (the README also names it in its text).
const MARKER: &str = "\n<!-- readme-check -->\n";

/// The fenced blocks' bodies, in order.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        match (&mut current, line.starts_with("```")) {
            (None, true) => current = Some(Vec::new()),
            (Some(body), true) => {
                blocks.push(body.join("\n"));
                current = None;
            }
            (Some(body), false) => body.push(line),
            (None, false) => {}
        }
    }
    blocks
}

fn examples(readme: &str) -> Vec<Example> {
    readme
        .split(MARKER)
        .skip(1)
        .map(|after| {
            let blocks = fenced_blocks(after);
            assert!(
                blocks.len() >= 2,
                "a {MARKER} needs a command block and an output block"
            );
            let command = shlex::split(&blocks[0].replace("\\\n", " "))
                .unwrap_or_else(|| panic!("not a shell command: {}", blocks[0]));
            let expected = blocks[1]
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            Example { command, expected }
        })
        .collect()
}

/// A line as compared: numbers of times, rates and latencies, and the program name, masked.
fn normalise(line: &str) -> String {
    let line = line.trim_end();
    if line.starts_with("Time ") || line.starts_with("Latency ") {
        // A number with its unit, if any: "102 ms" and "1.2 s" (a slow run) are both "#".
        let number = Regex::new(r"\d+(\.\d+)?( (ms|min|s|h)\b)?").unwrap();
        let mut masked = number.replace_all(line, "#").into_owned();
        while masked.contains("# #") {
            masked = masked.replace("# #", "#");
        }
        return masked;
    }
    if let Some(rest) = line.strip_prefix("Next       ") {
        let args = rest.split_once(' ').map_or("", |(_, a)| a);
        return format!("Next       batch {args}");
    }
    line.to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        } else if entry.file_type().unwrap().is_dir() {
            // samples/images/, which samples/images.csv names.
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        }
    }
}

#[test]
fn readme_examples_print_the_summaries_the_readme_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let examples = examples(&readme);
    assert!(
        examples.len() >= 3,
        "the README marks {} examples",
        examples.len()
    );
    let dir = TestDir::new();
    copy_dir(&root.join("samples"), &dir.join("samples"));
    for ex in &examples {
        assert_eq!(ex.command[0], "batch", "{:?}", ex.command);
        assert!(
            ex.command.iter().any(|w| w.starts_with("--mock")),
            "a README check runs on the mock only: {:?}",
            ex.command
        );
        let out = run(&dir, &ex.command[1..]);
        let printed: Vec<String> = stderr(&out).lines().map(normalise).collect();
        let mut from = 0;
        for want in &ex.expected {
            let want = normalise(want);
            match printed[from..].iter().position(|l| *l == want) {
                Some(i) => from += i + 1,
                None => panic!(
                    "README drift: `{}` did not print\n  {want}\nafter line {from} of\n{}",
                    ex.command.join(" "),
                    printed.join("\n")
                ),
            }
        }
    }
}

#[test]
fn the_readme_check_finds_marked_blocks_and_masks_only_what_varies() {
    let text = "x\n<!-- readme-check -->\n```sh\nbatch run a.csv \\\n  --mock\n```\n\ntext\n\n```\nRows       1 ok\nTime       2.3 s, 129 rows/s\n```\n";
    let ex = examples(text);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].command, ["batch", "run", "a.csv", "--mock"]);
    assert_eq!(
        ex[0].expected,
        ["Rows       1 ok", "Time       2.3 s, 129 rows/s"]
    );
    assert_eq!(
        normalise("Time       2.3 s, 129 rows/s"),
        "Time       #, # rows/s"
    );
    assert_eq!(
        normalise("Latency    p50 102 ms, max 4 min 05 s"),
        normalise("Latency    p50 1.2 s, max 110 ms")
    );
    assert_eq!(normalise("Rows       1 ok"), "Rows       1 ok");
    assert_eq!(
        normalise("Next       /x/batch run a --resume"),
        "Next       batch run a --resume"
    );
}
