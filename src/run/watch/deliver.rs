//! The watched folder's layout, and putting a finished run's files in place: results into
//! `done/`, the input into `processed/` or `failed/` (with its error file), never overwriting a
//! file that is already there.
//!
//! Every step can be carried out again after a crash without harm: files are written under a
//! temporary name and renamed into place, a destination that already exists counts as done, and
//! the input is moved only if the file in DIR is still the one that was run (a new file of the
//! same name that arrived during the run stays in DIR and is run in turn).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ledger::{Delivery, Ledger};
use crate::base::error::{Error, describe_io};

/// The folders of a watched DIR.
pub struct Folders {
    pub dir: PathBuf,
    /// `.batch-watch/`: the ledger, the work folders of runs and temporary files.
    pub state: PathBuf,
    runs: PathBuf,
    tmp: PathBuf,
}

/// Names of the work folder's files.
pub const WORK_INPUT: &str = "input.csv";
pub const WORK_RESULTS: &str = "results.csv";
pub const WORK_SUMMARY: &str = "summary.json";

impl Folders {
    /// Checks DIR and creates the folders the watcher writes, so a bad path fails at once.
    pub fn create(dir: &Path) -> Result<Folders, Error> {
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "{} is not a folder; give the folder to watch (create it first)",
                dir.display()
            )));
        }
        let state = dir.join(".batch-watch");
        let f = Folders {
            dir: dir.to_path_buf(),
            runs: state.join("runs"),
            tmp: state.join("tmp"),
            state,
        };
        for sub in ["done", "processed", "failed"] {
            mkdir(&dir.join(sub))?;
        }
        mkdir(&f.runs)?;
        mkdir(&f.tmp)?;
        Ok(f)
    }

    /// Removes temporary files a crash left behind; only while holding the ledger's lock, so
    /// no other watcher is using them.
    pub fn clear_temporary(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The work folder of the run with fingerprint `key`.
    pub fn work(&self, key: &str) -> PathBuf {
        self.runs.join(key)
    }

    /// A fresh temporary path on the same filesystem as DIR (so a rename is atomic).
    fn temp(&self, hint: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.tmp.join(format!(
            "{}-{}-{hint}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|e| {
        Error::Usage(format!(
            "cannot create the folder {}: {}",
            path.display(),
            describe_io(&e)
        ))
    })
}

/// The fingerprint of a run: SHA-256 over the settings that shape its requests and the input's
/// bytes, as hex.
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new(settings: &str) -> Fingerprint {
        let mut h = Sha256::new();
        h.update((settings.len() as u64).to_le_bytes());
        h.update(settings.as_bytes());
        Fingerprint(h)
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn hex(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Reads `src` once, copying it to a temporary file while fingerprinting it, so the run works on
/// exactly the bytes that were fingerprinted even if `src` changes later. Returns the key and
/// the copy.
pub fn stage(src: &Path, folders: &Folders, settings: &str) -> std::io::Result<(String, PathBuf)> {
    let tmp = folders.temp("input.csv");
    let result = (|| {
        let mut input = std::fs::File::open(src)?;
        let mut copy = std::fs::File::create(&tmp)?;
        let mut fp = Fingerprint::new(settings);
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            fp.update(&buf[..n]);
            copy.write_all(&buf[..n])?;
        }
        copy.sync_all()?;
        Ok(fp.hex())
    })();
    match result {
        Ok(key) => Ok((key, tmp)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The fingerprint of `path` under `settings`, or `None` if it cannot be read.
pub fn fingerprint(path: &Path, settings: &str) -> Option<String> {
    let mut input = std::fs::File::open(path).ok()?;
    let mut fp = Fingerprint::new(settings);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = input.read(&mut buf).ok()?;
        if n == 0 {
            return Some(fp.hex());
        }
        fp.update(&buf[..n]);
    }
}

/// Chooses where the files of input `name` go: the plain names if they are free, else the
/// first suffix `-2`, `-3`, ... free for every file of the set (so the input and its results
/// keep matching names). `error` is `Some` for an input that goes to `failed/`.
pub fn plan(
    folders: &Folders,
    ledger: &Ledger,
    key: &str,
    name: &str,
    error: Option<String>,
) -> Result<Delivery, Error> {
    let p = Path::new(name);
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "csv".into());
    for n in 1u32.. {
        let label = if n == 1 {
            stem.clone()
        } else {
            format!("{stem}-{n}")
        };
        let d = match &error {
            None => Delivery {
                id: 0,
                key: key.to_string(),
                name: name.to_string(),
                input_to: format!("processed/{label}.{ext}"),
                results_to: Some(format!("done/{label}.results.csv")),
                summary_to: Some(format!("done/{label}.summary.json")),
                error_to: None,
                error_text: None,
            },
            Some(text) => Delivery {
                id: 0,
                key: key.to_string(),
                name: name.to_string(),
                input_to: format!("failed/{label}.{ext}"),
                results_to: None,
                summary_to: None,
                error_to: Some(format!("failed/{label}.{ext}.error.txt")),
                error_text: Some(text.clone()),
            },
        };
        let targets = [
            Some(&d.input_to),
            d.results_to.as_ref(),
            d.summary_to.as_ref(),
            d.error_to.as_ref(),
        ];
        let mut free = true;
        for rel in targets.into_iter().flatten() {
            if folders.dir.join(rel).symlink_metadata().is_ok() || ledger.is_reserved(rel)? {
                free = false;
                break;
            }
        }
        if free {
            return Ok(d);
        }
    }
    unreachable!("some suffix is free")
}

/// Carries out `d`: results, summary and error file written into place, then the input moved.
/// Safe to call again for a delivery a crash cut short.
pub fn carry_out(folders: &Folders, d: &Delivery, settings: &str) -> Result<(), Error> {
    let work = folders.work(&d.key);
    let dest = |rel: &str| folders.dir.join(rel);
    if let Some(rel) = &d.results_to {
        let to = dest(rel);
        if !to.exists() {
            let from = work.join(WORK_RESULTS);
            let bytes = std::fs::read(&from).map_err(|e| io(&from, "read", e))?;
            write_new(folders, &to, &bytes)?;
        }
    }
    if let Some(rel) = &d.summary_to {
        let from = work.join(WORK_SUMMARY);
        let to = dest(rel);
        if !to.exists()
            && let Ok(bytes) = std::fs::read(&from)
        {
            write_new(folders, &to, &bytes)?;
        }
    }
    if let (Some(rel), Some(text)) = (&d.error_to, &d.error_text) {
        let to = dest(rel);
        if !to.exists() {
            write_new(folders, &to, text.as_bytes())?;
        }
    }
    let to = dest(&d.input_to);
    if to.symlink_metadata().is_err() {
        let from = folders.dir.join(&d.name);
        if fingerprint(&from, settings).as_deref() == Some(d.key.as_str()) {
            std::fs::rename(&from, &to).map_err(|e| {
                Error::io(
                    format!("cannot move {} to {}", from.display(), to.display()),
                    e,
                )
            })?;
        } else {
            // The input is gone or was replaced by a new file of the same name (which stays to
            // be run in turn): keep the copy that was run.
            let copy = work.join(WORK_INPUT);
            let bytes = std::fs::read(&copy).map_err(|e| io(&copy, "read", e))?;
            write_new(folders, &to, &bytes)?;
        }
    }
    Ok(())
}

/// Removes the work copies a delivered run no longer needs; its journal stays, so the same
/// input dropped in again resumes from it instead of paying again.
pub fn tidy(folders: &Folders, key: &str) {
    let work = folders.work(key);
    for name in [WORK_INPUT, WORK_RESULTS, WORK_SUMMARY] {
        let _ = std::fs::remove_file(work.join(name));
    }
}

/// Moves a staged copy into the work folder of `key` as its input (replacing an older copy: the
/// fingerprint says the bytes are the same).
pub fn adopt(folders: &Folders, staged: &Path, key: &str) -> Result<PathBuf, Error> {
    let work = folders.work(key);
    mkdir(&work)?;
    let input = work.join(WORK_INPUT);
    std::fs::rename(staged, &input).map_err(|e| {
        Error::io(
            format!("cannot move {} to {}", staged.display(), input.display()),
            e,
        )
    })?;
    Ok(input)
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("cannot {what} {}", path.display()), e)
}

/// Writes `bytes` to `to` through a temporary file and a rename, so `to` never holds part of
/// them.
fn write_new(folders: &Folders, to: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = folders.temp("out");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, to)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(to, "write", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Folders, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let folders = Folders::create(dir.path()).unwrap();
        let ledger = Ledger::open(&folders.state.join("ledger.sqlite"), dir.path()).unwrap();
        (dir, folders, ledger)
    }

    #[test]
    fn names_taken_get_one_suffix_for_the_whole_set() {
        let (dir, folders, ledger) = setup();
        let d = plan(&folders, &ledger, "k", "a.csv", None).unwrap();
        assert_eq!(d.input_to, "processed/a.csv");
        assert_eq!(d.results_to.as_deref(), Some("done/a.results.csv"));
        assert_eq!(d.summary_to.as_deref(), Some("done/a.summary.json"));

        // Only the results name is taken: the input gets the suffix too, to keep them paired.
        std::fs::write(dir.path().join("done/a.results.csv"), "x").unwrap();
        let d = plan(&folders, &ledger, "k", "a.csv", None).unwrap();
        assert_eq!(d.input_to, "processed/a-2.csv");
        assert_eq!(d.results_to.as_deref(), Some("done/a-2.results.csv"));

        std::fs::write(dir.path().join("processed/a-2.csv"), "x").unwrap();
        let d = plan(&folders, &ledger, "k", "a.csv", None).unwrap();
        assert_eq!(d.input_to, "processed/a-3.csv");

        let f = plan(&folders, &ledger, "k", "b.v1.CSV", Some("bad".into())).unwrap();
        assert_eq!(f.input_to, "failed/b.v1.CSV");
        assert_eq!(f.error_to.as_deref(), Some("failed/b.v1.CSV.error.txt"));
        assert_eq!(f.results_to, None);
    }

    #[test]
    fn a_pending_delivery_reserves_its_names() {
        let (_dir, folders, mut ledger) = setup();
        ledger.start("k", "a.csv").unwrap();
        let d = plan(&folders, &ledger, "k", "a.csv", None).unwrap();
        let outcome = super::super::ledger::Outcome {
            processed: true,
            ok: 1,
            failed: 0,
            skipped: 0,
            cost_usd: None,
        };
        ledger.finish("k", &outcome, d).unwrap();
        let next = plan(&folders, &ledger, "k2", "a.csv", None).unwrap();
        assert_eq!(next.input_to, "processed/a-2.csv");
    }

    #[test]
    fn carrying_out_twice_moves_once_and_overwrites_nothing() {
        let (dir, folders, ledger) = setup();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "id,text\n1,x\n").unwrap();
        let (key, staged) = stage(&input, &folders, "s").unwrap();
        assert_eq!(fingerprint(&input, "s").as_deref(), Some(key.as_str()));
        assert_ne!(fingerprint(&input, "t").as_deref(), Some(key.as_str()));
        adopt(&folders, &staged, &key).unwrap();
        let work = folders.work(&key);
        std::fs::write(work.join(WORK_RESULTS), "id,text,output\n1,x,y\n").unwrap();
        std::fs::write(work.join(WORK_SUMMARY), r#"{"ok":1}"#).unwrap();

        let d = plan(&folders, &ledger, &key, "a.csv", None).unwrap();
        carry_out(&folders, &d, "s").unwrap();
        assert!(!input.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("processed/a.csv")).unwrap(),
            "id,text\n1,x\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("done/a.results.csv")).unwrap(),
            "id,text,output\n1,x,y\n"
        );
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("done/a.summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(summary["ok"], 1);

        // A new a.csv arrives; carrying out the old delivery again leaves it alone.
        std::fs::write(&input, "id,text\n2,new\n").unwrap();
        carry_out(&folders, &d, "s").unwrap();
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "id,text\n2,new\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("processed/a.csv")).unwrap(),
            "id,text\n1,x\n"
        );
    }

    #[test]
    fn an_input_replaced_during_its_run_stays_and_the_run_copy_is_filed() {
        let (dir, folders, ledger) = setup();
        let input = dir.path().join("a.csv");
        std::fs::write(&input, "id\n1\n").unwrap();
        let (key, staged) = stage(&input, &folders, "s").unwrap();
        adopt(&folders, &staged, &key).unwrap();
        std::fs::write(&input, "id\n2\n").unwrap();
        let d = plan(&folders, &ledger, &key, "a.csv", Some("input error".into())).unwrap();
        carry_out(&folders, &d, "s").unwrap();
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "id\n2\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("failed/a.csv")).unwrap(),
            "id\n1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("failed/a.csv.error.txt")).unwrap(),
            "input error"
        );
    }
}
