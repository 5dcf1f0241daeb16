use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::plan::InvalidRunKey;

fn key(run: &str, consumer: &str) -> RunKey {
    RunKey::parse(run, consumer).expect("a valid key")
}

fn private_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("state");
    private_dir(&root, current_uid().expect("uid")).expect("a new root is private");
    (dir, root)
}

#[test]
fn a_new_root_is_created_private() {
    let (_dir, root) = private_root();
    let meta = fs::symlink_metadata(&root).expect("created");
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), current_uid().expect("uid"));
    let run = RunDir::open_under(&root, &key("run-1", "svc")).expect("opens");
    assert_eq!(fs::metadata(run.path()).expect("dir").mode() & 0o777, 0o700);
}

#[test]
fn a_root_open_to_others_or_a_symlink_is_refused_with_its_path() {
    let (dir, root) = private_root();
    let uid = current_uid().expect("uid");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = private_dir(&root, uid).expect_err("0755 is open to others");
    let text = err.to_string();
    assert!(text.contains(&root.display().to_string()) && text.contains("mode 0755"), "{text}");
    assert!(text.contains("chmod 700") && text.contains(STATE_DIR_ENV), "{text}");

    let link = dir.path().join("link");
    let target = dir.path().join("target");
    private_dir(&target, uid).expect("target");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = private_dir(&link, uid).expect_err("a symlink is not followed");
    assert!(err.to_string().contains("is a symlink"), "{err}");
}

#[test]
fn a_root_owned_by_another_user_is_refused_naming_the_owner() {
    let (_dir, root) = private_root();
    let uid = current_uid().expect("uid");
    if uid != 0 {
        // Only root can give a directory away; the owner check is then
        // exercised against another uid instead.
        eprintln!(
            "not root: cannot make a directory owned by another user; checked it against uid {} instead",
            uid + 1
        );
        let err = private_dir(&root, uid + 1).expect_err("owned by another uid");
        assert!(err.to_string().contains(&format!("owned by uid {uid}")), "{err}");
        return;
    }
    std::os::unix::fs::chown(&root, Some(65534), None).expect("chown");
    let err = private_dir(&root, uid).expect_err("owned by nobody");
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
}

#[test]
fn names_from_labels_or_the_environment_never_become_paths_outside_the_root() {
    let (dir, root) = private_root();
    let victim = dir.path().join("x");
    fs::create_dir(&victim).expect("victim");
    // A state folder takes a key, and no key holds these.
    for bad in ["..", "../x", "../../../tmp/x", ".", ""] {
        assert!(matches!(RunKey::parse(bad, "svc"), Err(InvalidRunKey::Run(_))), "{bad}");
        assert!(matches!(RunKey::parse("run", bad), Err(InvalidRunKey::Consumer(_))), "{bad}");
    }
    let _ = RunDir::open_under(&root, &key("run", "svc")).expect("opens");
    assert!(victim.is_dir());
    assert!(!root.join("x").exists());
}

#[test]
fn state_files_are_never_opened_through_a_symlink() {
    let (dir, root) = private_root();
    let run = RunDir::open_under(&root, &key("run-1", "svc")).expect("opens");
    let outside = dir.path().join("outside");
    fs::write(&outside, "{\"planted\": true}").expect("outside file");
    std::os::unix::fs::symlink(&outside, run.file("stack.json")).expect("symlink");
    std::os::unix::fs::symlink(&outside, run.file("failed")).expect("symlink");
    assert!(run.found().is_err(), "a planted stack.json symlink is not read");
    assert!(run.record_failed_test("t").is_err(), "appending through a symlink is refused");
    assert_eq!(fs::read_to_string(&outside).expect("still there"), "{\"planted\": true}");
}

fn launcher(pid: u32, alive: bool) -> Launcher {
    let me = Launcher::of(std::process::id()).expect("in /proc");
    if alive {
        me
    } else {
        // Same host and namespace, a start time no process has: finished.
        Launcher { pid, start_ticks: u64::MAX, ..me }
    }
}

#[test]
fn state_of_an_earlier_finished_use_of_the_run_id_is_cleared() {
    let (_dir, root) = private_root();
    let run = RunDir::open_under(&root, &key("ci-42", "svc")).expect("opens");
    let earlier = launcher(1, false);
    run.write("launcher", &earlier.label()).expect("earlier launcher");
    run.record_failure("build failed last time").expect("error");
    run.record_failed_test("old_test").expect("failed");
    let me = launcher(0, true);
    assert_eq!(run.claim(Some(me), &key("ci-42", "svc")).expect("claims"), Claim::Reset { leftovers: false });
    assert!(matches!(run.found().expect("reads"), Found::Nothing));
    assert!(run.failed_tests().is_empty());
    // Now it is this run's: a second process of the run keeps what it finds.
    run.record_failure("this run's error").expect("error");
    assert_eq!(run.claim(Some(me), &key("ci-42", "svc")).expect("claims"), Claim::Ours);
    assert!(matches!(run.found().expect("reads"), Found::Failed(m) if m == "this run's error"));
}

#[test]
fn an_earlier_use_that_got_as_far_as_setup_leaves_leftovers_to_remove() {
    let (_dir, root) = private_root();
    let run = RunDir::open_under(&root, &key("ci-43", "svc")).expect("opens");
    run.write("launcher", &launcher(1, false).label()).expect("earlier launcher");
    run.begin_attempt().expect("attempt");
    let claim = run.claim(Some(launcher(0, true)), &key("ci-43", "svc")).expect("claims");
    assert_eq!(claim, Claim::Reset { leftovers: true });
}

#[test]
fn a_live_or_foreign_launcher_shares_the_directory() {
    let (_dir, root) = private_root();
    let run = RunDir::open_under(&root, &key("ci-44", "svc")).expect("opens");
    let mut foreign = launcher(0, true);
    foreign.host = foreign.host.map(|h| crate::plan::Host { pid_ns: h.pid_ns + 1, ..h });
    run.write("launcher", &foreign.label()).expect("foreign launcher");
    run.record_failure("theirs").expect("error");
    let me = Launcher { start_ticks: 1, ..launcher(0, true) };
    assert_eq!(run.claim(Some(me), &key("ci-44", "svc")).expect("claims"), Claim::Ours);
    assert!(matches!(run.found().expect("reads"), Found::Failed(_)));
}

#[test]
fn a_kept_stack_of_an_earlier_use_is_not_silently_orphaned() {
    let (_dir, root) = private_root();
    let run = RunDir::open_under(&root, &key("ci-45", "svc")).expect("opens");
    run.write("launcher", &launcher(1, false).label()).expect("earlier launcher");
    run.mark_kept("failed: t").expect("kept");
    let err = run.claim(Some(launcher(0, true)), &key("ci-45", "svc")).expect_err("kept");
    let text = err.to_string();
    assert!(text.contains("e2e-infra down --consumer svc --run ci-45") && text.contains("failed: t"), "{text}");
}

#[test]
fn an_empty_state_dir_variable_is_refused_with_what_to_do() {
    let text = root_from(Some("".into())).expect_err("empty").to_string();
    assert!(text.contains(STATE_DIR_ENV) && text.contains("set but empty") && text.contains("unset it"), "{text}");
}
