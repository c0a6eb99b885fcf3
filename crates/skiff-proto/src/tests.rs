use super::*;

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            boot: BootTimes {
                init_start_ms: 2100,
                init_done_ms: 2150,
                ready_ms: 2160,
            },
            problems: vec!["required drive \"x\" is missing".into()],
        }),
        Message::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            workdir: Some("/tmp".into()),
            stdin: true,
            service: false,
            tty: Some(WindowSize { rows: 24, cols: 80 }),
            user: None,
            report_pid: false,
        }),
        Message::Started(42),
        Message::SetClock(1_700_000_000_123_456_789),
        Message::Renew(crate::Renewal {
            time_ns: 1_700_000_000_000_000_000,
            seed: vec![7; 32],
            hostname: Some("clone-1".into()),
            net: Some(crate::RenewedNet {
                mac: "52:54:00:aa:bb:cc".into(),
                address: "10.88.0.7/24".into(),
                gateway: Some("10.88.0.1".parse().expect("ip")),
                dns: None,
            }),
        }),
        Message::Resize(WindowSize {
            rows: 50,
            cols: 132,
        }),
        Message::Stdin(b"input".to_vec()),
        Message::Stdin(Vec::new()),
        Message::Stdout(vec![0, 255, 10, 13]),
        Message::Stderr(b"err\n".to_vec()),
        Message::Exited(ExitStatus::Code(3)),
        Message::Exited(ExitStatus::Signal(9)),
        Message::Signal(15),
        Message::Shutdown,
        Message::Error("no such thing".into()),
        Message::Exec(ExecRequest {
            argv: vec!["cat".into()],
            env: Vec::new(),
            workdir: None,
            stdin: true,
            service: false,
            tty: None,
            user: Some("user".into()),
            report_pid: true,
        }),
        Message::Fs(crate::fs::FsCall {
            user: None,
            op: crate::fs::FsOp::Write {
                path: "/tmp/a".into(),
            },
        }),
        Message::Info(crate::fs::FileInfo {
            name: "a".into(),
            path: "/tmp/a".into(),
            kind: crate::fs::FileKind::Symlink,
            size: 3,
            mode: 0o777,
            owner: "root".into(),
            group: "0".into(),
            modified_ns: -5,
            target: Some("/etc".into()),
        }),
        Message::FsFailed(crate::fs::FsError::new(
            crate::fs::FsErrorKind::NotFound,
            "/x: gone",
        )),
        Message::FsEvent(crate::fs::FsEvent {
            name: "d/f".into(),
            kind: crate::fs::FsEventKind::Rename,
        }),
        Message::Fs(crate::fs::FsCall {
            user: None,
            op: crate::fs::FsOp::Usage { path: "/".into() },
        }),
        Message::Usage(crate::fs::GuestUsage {
            cpus: 2,
            cpu_busy_ticks: 10,
            cpu_total_ticks: 40,
            mem_total: 128 << 20,
            mem_available: 100 << 20,
            mem_cached: 20 << 20,
            disk_total: 1 << 30,
            disk_used: 1 << 20,
        }),
    ]
}

#[test]
fn report_pid_is_left_out_when_false_for_older_agents() {
    let Message::Exec(req) = &all_messages()[1] else {
        panic!("the second message is an exec");
    };
    let text = serde_json::to_string(req).expect("json");
    assert!(!text.contains("report_pid"), "{text}");
}

#[test]
fn every_message_round_trips_through_encode_and_decode() {
    for msg in all_messages() {
        let mut buf = Vec::new();
        encode(&msg, &mut buf).expect("encode");
        let (back, used) = decode(&buf).expect("decode").expect("complete frame");
        assert_eq!(back, msg);
        assert_eq!(used, buf.len());
    }
}

#[test]
fn several_frames_in_one_buffer_decode_in_order() {
    let msgs = all_messages();
    let mut buf = Vec::new();
    for m in &msgs {
        encode(m, &mut buf).expect("encode");
    }
    let mut rest = &buf[..];
    let mut got = Vec::new();
    while let Some((m, used)) = decode(rest).expect("decode") {
        got.push(m);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(got, msgs);
}

#[test]
fn every_truncation_of_a_frame_asks_for_more_bytes() {
    let mut buf = Vec::new();
    encode(&Message::Stdout(b"hello world".to_vec()), &mut buf).expect("encode");
    for cut in 0..buf.len() {
        assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn oversized_length_prefix_is_rejected_before_reading_the_body() {
    let too_big = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert_eq!(
        decode(&too_big),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    let huge = u32::MAX.to_be_bytes();
    assert!(matches!(decode(&huge), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn zero_length_frame_and_unknown_tag_are_errors() {
    assert_eq!(decode(&[0, 0, 0, 0]), Err(DecodeError::Empty));
    assert_eq!(
        decode(&[0, 0, 0, 1, 200]),
        Err(DecodeError::UnknownTag(200))
    );
}

#[test]
fn malformed_json_bodies_name_the_message() {
    let frame = [0, 0, 0, 4, 6, b'{', b'x', b'}'];
    match decode(&frame) {
        Err(DecodeError::Malformed { what, .. }) => assert_eq!(what, "exited"),
        other => panic!("expected malformed exited, got {other:?}"),
    }
    let hello_extra = br#"{"protocol":1,"agent_version":"x","boot":{"init_start_ms":1,"init_done_ms":1,"ready_ms":1},"evil":true}"#;
    let mut frame = (hello_extra.len() as u32 + 1).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(hello_extra);
    assert!(matches!(
        decode(&frame),
        Err(DecodeError::Malformed { what: "hello", .. })
    ));
}

#[test]
fn signal_body_must_be_four_bytes() {
    assert!(matches!(
        decode(&[0, 0, 0, 3, 7, 1, 2]),
        Err(DecodeError::Malformed { what: "signal", .. })
    ));
}

#[test]
fn encode_refuses_frames_over_the_limit() {
    let mut buf = vec![9u8];
    let err = encode(&Message::Stdout(vec![0; MAX_FRAME_LEN]), &mut buf).unwrap_err();
    assert!(matches!(err, FrameError::EncodeTooLarge { .. }));
    assert_eq!(
        buf,
        vec![9u8],
        "a refused frame leaves the buffer as it was"
    );
}

#[test]
fn read_message_reports_clean_close_truncation_and_garbage() {
    let mut empty: &[u8] = &[];
    assert!(read_message(&mut empty).expect("clean close").is_none());

    let mut buf = Vec::new();
    encode(&Message::Stderr(b"abc".to_vec()), &mut buf).expect("encode");
    let mut cut: &[u8] = &buf[..buf.len() - 1];
    assert!(matches!(read_message(&mut cut), Err(FrameError::Truncated)));
    let mut half_header: &[u8] = &buf[..2];
    assert!(matches!(
        read_message(&mut half_header),
        Err(FrameError::Truncated)
    ));

    let mut garbage: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    assert!(matches!(
        read_message(&mut garbage),
        Err(FrameError::Decode(DecodeError::TooLarge { .. }))
    ));
}

/// A small deterministic generator, so this test needs no extra crates and
/// fails the same way every time.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn decoder_survives_arbitrary_bytes() {
    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let valid: Vec<Vec<u8>> = all_messages()
        .iter()
        .map(|m| {
            let mut b = Vec::new();
            encode(m, &mut b).expect("encode");
            b
        })
        .collect();
    for round in 0..50_000u64 {
        let mut bytes = if round % 2 == 0 {
            let len = (rng.next() % 64) as usize;
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            // Mutate a valid frame: flip bytes, keep the length sane.
            let mut b = valid[(rng.next() as usize) % valid.len()].clone();
            let flips = 1 + rng.next() % 4;
            for _ in 0..flips {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            b
        };
        // Whatever comes back, it must not panic and must not claim more
        // bytes than it was given.
        if let Ok(Some((_, used))) = decode(&bytes) {
            assert!(used <= bytes.len());
        }
        let mut reader: &[u8] = &bytes;
        let _ = read_message(&mut reader);
        bytes.clear();
    }
}
