//! The one check that no file a command writes is a file it reads, or another file it writes,
//! before anything is sent: `--summary-json in.csv` would otherwise overwrite the input at the
//! end of a paid run, and `--log in.csv` append to it.
//!
//! Paths are compared as the file system sees them, not as they are spelt: an existing file is
//! canonicalized (symlinks, `./`, `..` resolved), a file not yet written is its canonical folder
//! joined with its name, and two existing files are also compared by device and inode (a hard
//! link). `-` (stdin or stdout) is never a file here.

use std::path::{Path, PathBuf};

use crate::base::error::Error;
use crate::base::format::is_std;

/// The files of one command: what it reads and what it writes, each with how a user names it.
#[derive(Debug, Default)]
pub struct PathCheck {
    /// `(what it is, path)`: "the input file", "the --prompt-file", ...
    inputs: Vec<(String, PathBuf)>,
    /// `(flag, path)`: "-o", "--summary-json", ...
    outputs: Vec<(String, PathBuf)>,
}

impl PathCheck {
    /// A file the command reads, if given; `what` completes "X is ...".
    pub fn input(mut self, what: &str, path: Option<&Path>) -> Self {
        if let Some(p) = path.filter(|p| !is_std(p)) {
            self.inputs.push((what.to_string(), p.to_path_buf()));
        }
        self
    }

    /// A file the command writes, if given, named by its flag.
    pub fn output(mut self, flag: &str, path: Option<&Path>) -> Self {
        if let Some(p) = path.filter(|p| !is_std(p)) {
            self.outputs.push((flag.to_string(), p.to_path_buf()));
        }
        self
    }

    /// Fails on the first output that is an input or an earlier output.
    pub fn check(&self) -> Result<(), Error> {
        let inputs: Vec<(&str, Resolved)> = self
            .inputs
            .iter()
            .map(|(what, p)| (what.as_str(), Resolved::of(p)))
            .collect();
        let mut seen: Vec<(&str, Resolved)> = Vec::new();
        for (flag, path) in &self.outputs {
            let out = Resolved::of(path);
            if let Some((what, _)) = inputs.iter().find(|(_, i)| i.same(&out)) {
                return Err(clash(flag, path, what));
            }
            if let Some((other, _)) = seen.iter().find(|(_, o)| o.same(&out)) {
                return Err(clash(flag, path, &format!("also given to {other}")));
            }
            seen.push((flag.as_str(), out));
        }
        Ok(())
    }
}

fn clash(flag: &str, path: &Path, what: &str) -> Error {
    Error::Usage(format!(
        "{flag} {} is {what}; pick another path",
        path.display()
    ))
}

/// A path as the file system sees it.
#[derive(Debug)]
struct Resolved {
    path: PathBuf,
    /// Device and inode, for a file that exists (unix).
    id: Option<(u64, u64)>,
}

impl Resolved {
    fn of(p: &Path) -> Resolved {
        Resolved {
            path: canonical(p).unwrap_or_else(|| p.to_path_buf()),
            id: file_id(p),
        }
    }

    fn same(&self, other: &Resolved) -> bool {
        self.path == other.path || (self.id.is_some() && self.id == other.id)
    }
}

/// The canonical path of `p`, or of its folder joined with its name when it does not exist yet.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(p.file_name()?))
}

#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<(), String> {
        let mut c = PathCheck::default();
        for (w, p) in inputs {
            c = c.input(w, Some(p));
        }
        for (f, p) in outputs {
            c = c.output(f, Some(p));
        }
        c.check().map_err(|e| e.to_string())
    }

    #[test]
    fn an_output_spelt_differently_from_the_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "a\n1\n").unwrap();
        let dotted = dir.path().join(".").join("sub").join("..").join("in.csv");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let msg = check(
            &[("the input file", &input)],
            &[("--summary-json", &dotted)],
        )
        .unwrap_err();
        assert!(
            msg.starts_with("--summary-json ")
                && msg.ends_with("is the input file; pick another path"),
            "{msg}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_and_hard_links_are_the_file_they_point_to() {
        let dir = tempfile::tempdir().unwrap();
        let prompt = dir.path().join("prompt.txt");
        std::fs::write(&prompt, "x").unwrap();
        let soft = dir.path().join("soft.txt");
        let hard = dir.path().join("hard.txt");
        std::os::unix::fs::symlink(&prompt, &soft).unwrap();
        std::fs::hard_link(&prompt, &hard).unwrap();
        for link in [&soft, &hard] {
            let msg = check(&[("the --prompt-file", &prompt)], &[("--log", link)]).unwrap_err();
            assert!(msg.contains("is the --prompt-file"), "{msg}");
        }
    }

    #[test]
    fn two_outputs_on_one_file_are_refused_and_distinct_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        let msg = check(&[], &[("-o", &a), ("--summary-json", &a)]).unwrap_err();
        assert!(msg.contains("is also given to -o"), "{msg}");
        assert_eq!(check(&[], &[("-o", &a), ("--summary-json", &b)]), Ok(()));
        assert_eq!(
            check(
                &[("the input file", Path::new("-"))],
                &[("-o", Path::new("-"))]
            ),
            Ok(())
        );
    }
}
