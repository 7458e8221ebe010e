//! End-to-end tests of issue #19's hostile inputs and servers (bounded inputs, template budgets,
//! path collisions, echoed secrets) and #18's files people have (delimiters), driving the real
//! binary against servers the tests start on 127.0.0.1.

use crate::util::{TestDir, assert_code, run, show, stderr};

const INPUT: &str = "id,text\n1,hello\n2,world\n";

/// `batch run in.csv --mock` with `extra` flags.
fn run_mock(dir: &TestDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "in.csv", "--mock", "--prompt", "Say {{ text }}"];
    args.extend_from_slice(extra);
    run(dir, args)
}

// ---------------------------------------------------------------------------------------------
// #19 item 7: no output is an input, or another output
// ---------------------------------------------------------------------------------------------

#[test]
fn summary_json_or_log_on_the_input_is_refused_before_anything_is_sent() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    std::fs::create_dir(dir.join("sub")).unwrap();
    for (flag, path) in [
        ("--summary-json", "in.csv"),
        ("--summary-json", "./sub/../in.csv"),
        ("--log", "in.csv"),
        ("--state", "./in.csv"),
    ] {
        let out = run_mock(&dir, &[flag, path]);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{flag} {path} is the input file; pick another path"
            )),
            "{flag} {path}: {err}"
        );
        assert_eq!(dir.read("in.csv"), INPUT, "the input is untouched");
        assert!(!dir.join("in.results.csv").exists(), "{}", show(&out));
    }
}

#[cfg(unix)]
#[test]
fn an_output_through_a_symlink_to_the_prompt_file_is_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let prompt = dir.create("prompt.txt", "Say {{ text }}");
    std::os::unix::fs::symlink(&prompt, dir.join("link.json")).unwrap();
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--mock",
            "--prompt-file",
            "prompt.txt",
            "--summary-json",
            "link.json",
        ],
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("is the --prompt-file"),
        "{}",
        show(&out)
    );
    assert_eq!(dir.read("prompt.txt"), "Say {{ text }}");
}

#[test]
fn two_outputs_on_one_file_are_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let out = run_mock(&dir, &["--log", "out.json", "--summary-json", "./out.json"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--summary-json ./out.json is also given to --log"),
        "{}",
        show(&out)
    );
    let out = run_mock(&dir, &["-o", "r.csv", "--log", "r.sqlite"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("also given to --state"),
        "{}",
        show(&out)
    );
}

#[test]
fn bench_exports_on_an_input_are_refused() {
    let dir = TestDir::new();
    dir.create("in.csv", INPUT);
    let out = run(
        &dir,
        [
            "bench",
            "in.csv",
            "--mock",
            "--prompt",
            "Say {{ text }}",
            "--export-json",
            "in.csv",
        ],
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--export-json in.csv is the input file"),
        "{}",
        show(&out)
    );
    assert_eq!(dir.read("in.csv"), INPUT);
}

// ---------------------------------------------------------------------------------------------
// #19 item 6: templates that never end
// ---------------------------------------------------------------------------------------------

#[test]
fn endless_templates_fail_in_the_pre_flight_naming_template_and_row() {
    let dir = TestDir::new();
    let long = "x".repeat(3000);
    dir.create("in.csv", &format!("id,text\n1,short\n2,{long}\n"));
    let nested = "{% for a in text %}{% for b in text %}{% for c in text %}.{% endfor %}\
                  {% endfor %}{% endfor %}";
    let doubling = "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}\
                    {% endif %}{% endmacro %}{{ d(text, 60) }}";
    for (template, reason) in [(nested, "steps"), (doubling, "nested deeper")] {
        let out = run(&dir, ["run", "in.csv", "--mock", "--prompt", template]);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("in.csv: line 3") && err.contains("user template") && err.contains(reason),
            "{err}"
        );
        assert!(!dir.join("in.results.csv").exists());
    }
}

#[test]
fn a_row_lookup_of_a_missing_column_lists_the_columns_once() {
    let dir = TestDir::new();
    dir.create("in.csv", "id,product\n1,a\n2,b\n3,c\n");
    let out = run(
        &dir,
        [
            "run",
            "in.csv",
            "--mock",
            "--prompt",
            "{{ row[\"product name\"] }}",
        ],
    );
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("{{ row[\"product name\"] }}, which is not a column")
            && err.contains("\"id\", \"product\""),
        "{err}"
    );
    assert_eq!(err.matches("not a column").count(), 1, "{err}");
}
