//! Commands that work on files, not through a server: the callers file
//! (`cotejo token`) and the audit log of a data directory (`cotejo audit`),
//! which may be read while a server runs on it.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

use crate::{
    auth::{self, Role},
    store::{self, AuditReader, Checkpoints, StoreError},
};

fn roles(names: &[String]) -> anyhow::Result<Vec<Role>> {
    let mut out = Vec::new();
    for n in names {
        let Some(r) = Role::parse(n) else {
            bail!("unknown role {n:?}: the roles are identify, enroll, admin, audit");
        };
        if !out.contains(&r) {
            out.push(r);
        }
    }
    if out.is_empty() {
        bail!("give at least one role (--roles identify,enroll,admin,audit)");
    }
    Ok(out)
}

/// `cotejo token add`: prints a new token once (or, with `certificate`,
/// grants roles to a client certificate's name).
pub fn token_add(file: &Path, name: &str, role_names: &[String], certificate: bool) -> anyhow::Result<()> {
    let roles = roles(role_names)?;
    if certificate {
        auth::add_certificate(file, name, &roles)?;
        eprintln!("client certificate {name:?} may now: {}", names(&roles));
        return Ok(());
    }
    let token = auth::add_token(file, name, &roles)?;
    eprintln!("token for {name:?} ({}); shown once, only its hash is kept in {}:", names(&roles), file.display());
    println!("{token}");
    Ok(())
}

fn names(roles: &[Role]) -> String {
    roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
}

/// `cotejo token revoke`.
pub fn token_revoke(file: &Path, name: &str) -> anyhow::Result<()> {
    let n = auth::revoke(file, name)?;
    eprintln!("revoked {n} credential(s) of {name:?}; a running server drops them within server.reload_secs");
    Ok(())
}

/// Where the signed checkpoints are, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct CheckpointArgs {
    /// Folder of the checkpoints.
    pub dir: Option<PathBuf>,
    /// Key that signs them.
    pub key_file: Option<PathBuf>,
}

/// `cotejo audit verify`: exits non-zero, naming the first broken entry,
/// when the chain or the last checkpoint does not hold.
pub fn audit_verify(data_dir: &Path, cp: &CheckpointArgs, json: bool) -> anyhow::Result<()> {
    let reader = AuditReader::open(data_dir)?;
    let last = match (&cp.dir, &cp.key_file) {
        (Some(dir), Some(key)) => Checkpoints::open(dir, key, data_dir)?.read()?,
        (None, None) => None,
        _ => bail!("--checkpoint-dir and --checkpoint-key-file go together"),
    };
    match reader.verify(last.as_ref(), false) {
        Ok(c) => {
            if json {
                let v = serde_json::json!({"intact": true, "entries": c.entries, "head_seq": c.head_seq,
                    "checkpoint_seq": last.as_ref().map(|l| l.seq)});
                println!("{v}");
            } else {
                let anchor = match &last {
                    Some(l) => format!("; the signed checkpoint at entry {} matches", l.seq),
                    None => "; no signed checkpoint checked (truncation would go unseen)".into(),
                };
                println!("audit log intact: {} entries, head {}{anchor}", c.entries, c.head_seq);
            }
            Ok(())
        }
        Err(StoreError::AuditBroken { seq, problem }) => {
            if json {
                println!("{}", serde_json::json!({"intact": false, "first_broken_seq": seq, "problem": problem}));
            }
            bail!("audit log BROKEN at entry {seq}: {problem}")
        }
        Err(e) => Err(e).context("audit log"),
    }
}

/// `cotejo audit export`: JSON lines from `from_seq` on, for a SIEM.
pub fn audit_export(data_dir: &Path, from_seq: i64) -> anyhow::Result<()> {
    let reader = AuditReader::open(data_dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut next = from_seq.max(1);
    loop {
        let page = reader.entries(next, 10_000)?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for e in &page {
            serde_json::to_writer(&mut out, e)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `cotejo backup`.
pub fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<()> {
    yield_to_the_server();
    let t = std::time::Instant::now();
    let m = store::backup::backup(data_dir, out)?;
    println!(
        "backed up {} subjects, {} templates, audit entries 1..={} to {} in {:.1} s",
        m.subjects,
        m.templates,
        m.audit_head,
        out.display(),
        t.elapsed().as_secs_f64()
    );
    println!("keys needed to open it: {} (not in the backup)", store::backup::describe_keys(&m));
    Ok(())
}

/// `cotejo restore`.
pub fn restore(backup: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let m = store::backup::restore(backup, data_dir)?;
    println!(
        "restored {} subjects, {} templates, audit entries 1..={} into {}",
        m.subjects,
        m.templates,
        m.audit_head,
        data_dir.display()
    );
    println!(
        "the server needs these keys: {} (store.key_dir, or the development key file {}/template.key); its audit \
         checkpoints must be a fresh folder or match this backup",
        store::backup::describe_keys(&m),
        data_dir.display()
    );
    Ok(())
}

/// Nice 10 for this process: a backup beside a running server leaves it
/// most of the cores (it slows under load, it never stops).
#[allow(unsafe_code)]
fn yield_to_the_server() {
    // SAFETY: setpriority on this process (who 0) with a valid `which`; no memory is shared.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0 {
        eprintln!("note: cannot lower this backup's priority: {}", std::io::Error::last_os_error());
    }
}
