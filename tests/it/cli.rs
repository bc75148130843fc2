//! The command line as a newcomer meets it: `--help` and `--version`, errors naming the
//! valid arguments, and `chat` driven through a pipe (the whole pipeline in process).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use whatsapp_webhook::commands::{HELP_TEXT, OTR_SESSION_TEXT};

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-webhook");

fn run(args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run binary");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("binary ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_on_the_program_and_every_command_exits_0() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["serve", "--help"],
        &["chat", "--help"],
        &["create-table", "-h"],
        &["help", "chat"],
    ] {
        let out = run(args, "", &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}");
        assert!(
            stdout.contains("Usage: whatsapp-webhook"),
            "{args:?}: {stdout}"
        );
    }
    let top = text(&run(&["--help"], "", &[]).stdout);
    for command in ["serve", "chat", "create-table", "AWS_LAMBDA_RUNTIME_API"] {
        assert!(top.contains(command), "--help names {command}: {top}");
    }
    let serve = text(&run(&["serve", "--help"], "", &[]).stdout);
    assert!(serve.contains("-c, --config <FILE>"), "{serve}");
}

#[test]
fn version_prints_the_crate_version() {
    for flag in ["--version", "-V"] {
        let out = run(&[flag], "", &[]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            text(&out.stdout),
            format!("whatsapp-webhook {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn unknown_arguments_exit_2_naming_the_valid_ones() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--bogus"], "-c/--config, -h/--help"),
        (&["chat", "extra"], "-c/--config, -h/--help"),
        (&["frob"], "serve, chat, create-table"),
        (&["--confg", "x"], "serve, chat, create-table"),
    ];
    for (args, valid) in cases {
        let out = run(args, "", &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[args.len() - 1]) || stderr.contains(args[0]));
        assert!(stderr.contains(valid), "{args:?} names {valid}: {stderr}");
    }
    // `--config` needs its file.
    let out = run(&["serve", "--config"], "", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("<FILE>"));
}

#[test]
fn no_command_outside_lambda_prints_the_usage_and_exits_2() {
    let out = run(&[], "", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: whatsapp-webhook"));
    assert!(out.stdout.is_empty());
}

/// What the bot printed after each line typed: (the line, its messages, whether the
/// read/typing status was shown). Messages are `bot:` blocks, continuation lines
/// indented by five spaces.
fn transcript(stdout: &str) -> Vec<(String, Vec<String>, bool)> {
    let mut turns: Vec<(String, Vec<String>, bool)> = Vec::new();
    for line in stdout.lines() {
        if let Some(typed) = line.strip_prefix("> ") {
            turns.push((typed.to_string(), Vec::new(), false));
            continue;
        }
        let (_, messages, status) = turns.last_mut().expect("output follows a line typed");
        if line == "  \u{2713}\u{2713} read \u{b7} typing\u{2026}" {
            *status = true;
        } else if let Some(first) = line.strip_prefix("bot: ") {
            messages.push(first.to_string());
        } else if let Some(more) = line.strip_prefix("     ") {
            let last = messages
                .last_mut()
                .expect("a continuation follows a message");
            last.push('\n');
            last.push_str(more);
        } else {
            messages.push(line.to_string());
        }
    }
    turns
}

#[test]
fn chat_answers_lines_from_a_pipe_as_whatsapp_shows_them() {
    let long: String = (0..900).map(|i| format!("word{i} ")).collect();
    let long = long.trim_end();
    assert!(long.len() > 4096);
    let input = format!("hi\n/help\n**bold** and _it_\n{long}\n/otr\nstill here\n");
    let out = run(&["chat"], &input, &[]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

    let turns = transcript(&stdout);
    let typed: Vec<&str> = turns.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        typed,
        [
            "hi",
            "/help",
            "**bold** and _it_",
            long,
            "/otr",
            "still here"
        ]
    );
    assert_eq!(turns[0].1, ["hi"]);
    assert!(turns[0].2, "the read receipt and typing indicator show");
    assert_eq!(turns[1].1, [HELP_TEXT]);
    // The engine's Markdown arrives as WhatsApp markup.
    assert_eq!(turns[2].1, ["*bold* and _it_"]);
    // A reply over 4096 UTF-16 units goes out in parts, each its own message.
    let parts = &turns[3].1;
    assert!(parts.len() >= 2, "split: {parts:?}");
    assert!(parts.iter().all(|p| p.encode_utf16().count() <= 4096));
    assert_eq!(
        parts.join(" ").split_whitespace().collect::<Vec<_>>(),
        long.split(' ').collect::<Vec<_>>()
    );
    assert_eq!(turns[4].1, [OTR_SESSION_TEXT]);
    assert_eq!(turns[5].1, ["still here"]);
    // The text is the conversation's, on stdout; the log (stderr) carries none of it.
    assert!(
        !stderr.contains("still here") && !stderr.contains("word1"),
        "{stderr}"
    );
}

#[test]
fn chat_with_a_config_runs_its_policy_and_says_when_nothing_came_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "channels:\n  whatsapp:\n    phone_number_id: '42'\n    verify_token: v\n    \
         allow_unsigned: true\n    read_receipts: false\n    allowed_numbers: ['15550009999']\n",
    )
    .expect("write config");
    let config = path.to_str().expect("utf-8 path");
    let out = run(&["chat", "--config", config], "hi\n", &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout, "> hi\n  (no reply)\n",
        "the chat number is not allowed"
    );

    std::fs::write(
        &path,
        "channels:\n  whatsapp:\n    phone_number_id: '42'\n    verify_token: v\n    \
         allow_unsigned: true\n    read_receipts: false\n    allowed_numbers: ['15550001234']\n",
    )
    .expect("write config");
    let out = run(&["chat", "-c", config], "hi\n", &[]);
    assert_eq!(
        text(&out.stdout),
        "> hi\nbot: hi\n",
        "allowed, no read receipt"
    );
}

#[test]
fn logs_to_a_pipe_or_under_no_color_have_no_colour_codes() {
    // `chat` at debug level writes log lines; stderr is a pipe here.
    for envs in [
        &[("LOG_LEVEL", "debug")][..],
        &[("LOG_LEVEL", "debug"), ("NO_COLOR", "1")],
    ] {
        let out = run(&["chat"], "hi\n", envs);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0));
        assert!(!stderr.is_empty(), "debug logging writes something");
        assert!(!stderr.contains('\u{1b}'), "no ANSI codes: {stderr:?}");
    }
    // Other commands log to stdout: `create-table` on the local defaults logs that it
    // uses them, then stops (memory state has no table).
    let out = run(&["create-table"], "", &[("LOG_LEVEL", "info")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("built-in local defaults"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "no ANSI codes: {stdout:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_shows_tier3_buttons_as_choices_and_a_number_taps_one() {
    use crate::openparallax_fake::{Fake, install_with_approval};
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let fake = Fake::start(install_with_approval(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "channels:\n  whatsapp:\n    phone_number_id: '42'\n    verify_token: v\n    \
             allow_unsigned: true\nengine:\n  kind: openparallax\n  url: {}\n  \
             tier3_from_whatsapp: true\n",
            fake.url
        ),
    )
    .expect("write config");

    let transcript = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["chat", "--config"])
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run binary");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let mut wait_for = |needle: &str| {
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return;
                }
            }
            panic!("no line with {needle:?} in {seen:#?}");
        };
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "install it").expect("write");
        wait_for("(type 1-2 to tap a button)");
        writeln!(stdin, "1").expect("write");
        wait_for("bot: Done: the package is installed.");
        drop(stdin);
        let status = child.wait().expect("chat ends");
        assert!(status.success());
        seen
    })
    .await
    .expect("the chat");

    assert!(
        transcript.iter().any(|l| l == "     [1] Approve"),
        "{transcript:#?}"
    );
    assert!(
        transcript.iter().any(|l| l == "     [2] Deny"),
        "{transcript:#?}"
    );
    assert_eq!(fake.decisions().len(), 1);
    assert_eq!(fake.decisions()[0].1, "approve");
}
