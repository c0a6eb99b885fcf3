//! The bridge with a test playing the guest on its serial socket.
use super::*;
use skiff_proto::mux::MuxFrame as F;

/// The guest's end of the serial port, as a test drives it.
struct Guest {
    stream: UnixStream,
    decoder: MuxDecoder,
    pending: std::collections::VecDeque<MuxFrame>,
    attached: bool,
    skip_credit: bool,
}

impl Guest {
    async fn connect(listen: &Path) -> Guest {
        for _ in 0..200 {
            if let Ok(stream) = UnixStream::connect(listen).await {
                return Guest {
                    stream,
                    decoder: MuxDecoder::new(),
                    pending: Default::default(),
                    attached: false,
                    skip_credit: false,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the bridge does not listen");
    }

    /// The next frame; a repeated attach is answered as the agent does.
    async fn next(&mut self) -> MuxFrame {
        loop {
            match self.next_any().await {
                F::Attach { nonce } if self.attached => {
                    self.send(F::Attached { nonce }).await;
                }
                F::Credit { .. } if self.skip_credit => {}
                f => return f,
            }
        }
    }

    async fn next_any(&mut self) -> MuxFrame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.pending.pop_front() {
                return f;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                .await
                .expect("a frame in time")
                .expect("read");
            assert!(n > 0, "the bridge hung up");
            self.pending
                .extend(self.decoder.feed(&buf[..n]).into_iter().flatten());
        }
    }

    async fn send(&mut self, frame: F) {
        self.stream.write_all(&frame.encode()).await.expect("send");
    }

    /// Answer the attach (after some stale bytes of an older session).
    async fn attach(&mut self) {
        let F::Attach { nonce } = self.next().await else {
            panic!("no attach first");
        };
        self.stream.write_all(&[0x41, 0x42, 0]).await.expect("junk");
        self.send(F::Attached { nonce: nonce ^ 1 }).await;
        self.send(F::Attached { nonce }).await;
        self.attached = true;
    }
}

async fn client(uds: &Path, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(uds).await.expect("connect");
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .expect("w");
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await.expect("reply");
        if b == b'\n' {
            break;
        }
        line.push(b);
    }
    (s, String::from_utf8(line).expect("utf8"))
}

async fn started() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let (listen, uds) = (
        dir.path().join("serial.sock"),
        dir.path().join("vsock.sock"),
    );
    let (l, u) = (listen.clone(), uds.clone());
    tokio::spawn(async move { run(&l, &u).await });
    (dir, listen, uds)
}

#[tokio::test]
async fn a_client_connects_through_the_port_and_bytes_flow_both_ways() {
    let (_dir, listen, uds) = started().await;
    let mut guest = Guest::connect(&listen).await;
    guest.attach().await;
    let ((mut c, reply), channel) = tokio::join!(client(&uds, 1024), async {
        let F::Open { channel, port } = guest.next().await else {
            panic!("no open");
        };
        assert_eq!((channel % 2, port), (0, 1024));
        guest.send(F::Accept { channel }).await;
        channel
    });
    assert_eq!(reply, "OK 1024");
    c.write_all(b"to the guest").await.expect("w");
    assert_eq!(
        guest.next().await,
        F::Data {
            channel,
            bytes: b"to the guest".to_vec()
        }
    );
    guest
        .send(F::Data {
            channel,
            bytes: b"to the host".to_vec(),
        })
        .await;
    let mut got = [0u8; 11];
    c.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"to the host");
    // The guest closes: the client reads the end.
    guest.send(F::Close { channel }).await;
    assert_eq!(c.read(&mut got).await.expect("read"), 0);
    // A client that goes away closes its channel.
    guest.skip_credit = true;
    let open = async {
        let F::Open { channel, .. } = guest.next().await else {
            panic!("no open");
        };
        guest.send(F::Accept { channel }).await;
        channel
    };
    let ((second, _), other) = tokio::join!(client(&uds, 1024), open);
    assert_ne!(other, channel);
    drop(second);
    loop {
        match guest.next().await {
            F::Close { channel } if channel == other => break,
            F::Credit { .. } | F::Close { .. } => {}
            f => panic!("{f:?}"),
        }
    }
}

#[tokio::test]
async fn data_past_the_window_closes_only_that_channel_and_guest_opens_work() {
    let (_dir, listen, uds) = started().await;
    let ready = tokio::net::UnixListener::bind(crate::plan::ready_socket_path(&uds, 1025))
        .expect("bind ready");
    let mut guest = Guest::connect(&listen).await;
    guest.attach().await;
    // The guest opens the ready connection.
    guest
        .send(F::Open {
            channel: 1,
            port: 1025,
        })
        .await;
    let (mut hello_side, _) = ready.accept().await.expect("accept");
    assert_eq!(guest.next().await, F::Accept { channel: 1 });
    guest
        .send(F::Data {
            channel: 1,
            bytes: b"hello".to_vec(),
        })
        .await;
    let mut got = [0u8; 5];
    hello_side.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"hello");
    // The host's reader consumed it: credit goes back to the guest.
    assert_eq!(
        guest.next().await,
        F::Credit {
            channel: 1,
            bytes: 5
        }
    );

    // A client nobody reads for: the guest may not flood it.
    let open = async {
        let F::Open { channel, .. } = guest.next().await else {
            panic!("no open");
        };
        guest.send(F::Accept { channel }).await;
        channel
    };
    let ((mut flooded, reply), channel) = tokio::join!(client(&uds, 1024), open);
    assert_eq!(reply, "OK 1024");
    // The bridge hands data on as the client's socket takes it; once
    // that is full, more than a window unacknowledged is a breach.
    let chunk = vec![7u8; skiff_proto::mux::MAX_DATA];
    guest.skip_credit = true;
    for _ in 0..64 {
        guest
            .send(F::Data {
                channel,
                bytes: chunk.clone(),
            })
            .await;
    }
    assert_eq!(guest.next().await, F::Close { channel });
    guest.skip_credit = false;
    let mut all = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), flooded.read_to_end(&mut all))
        .await
        .expect("end in time")
        .expect("read");
    assert!(n < 64 * chunk.len(), "{n}");
    // The ready connection still works.
    hello_side.write_all(b"ping").await.expect("w");
    assert_eq!(
        guest.next().await,
        F::Data {
            channel: 1,
            bytes: b"ping".to_vec()
        }
    );
}

#[tokio::test]
async fn a_new_qemu_attaches_anew_and_the_old_channels_end() {
    let (_dir, listen, uds) = started().await;
    let mut guest = Guest::connect(&listen).await;
    guest.attach().await;
    let open = async {
        let F::Open { channel, .. } = guest.next().await else {
            panic!("no open");
        };
        guest.send(F::Accept { channel }).await;
    };
    let ((mut old, _), ()) = tokio::join!(client(&uds, 1024), open);
    drop(guest);
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut all))
        .await
        .expect("the old channel ends")
        .expect("read");
    // A client that comes while no guest is attached waits for one.
    let waiting = tokio::spawn({
        let uds = uds.clone();
        async move { client(&uds, 1024).await.1 }
    });
    let mut again = Guest::connect(&listen).await;
    again.attach().await;
    let F::Open { channel, .. } = again.next().await else {
        panic!("no open");
    };
    again.send(F::Accept { channel }).await;
    assert_eq!(waiting.await.expect("client"), "OK 1024");
    // A guest refusal is the client's error line.
    let refused = async {
        // (The waiting client's channel closed when it went.)
        let channel = loop {
            match again.next().await {
                F::Open { channel, .. } => break channel,
                F::Close { .. } => {}
                other => panic!("{other:?}"),
            }
        };
        again.send(F::Close { channel }).await;
    };
    let ((_, reply), ()) = tokio::join!(client(&uds, 9), refused);
    assert!(reply.starts_with("ERROR"), "{reply}");
}

#[tokio::test]
async fn a_guest_that_floods_opens_and_never_reads_gets_a_bounded_queue_of_answers() {
    let (_dir, listen, uds) = started().await;
    let mut guest = Guest::connect(&listen).await;
    guest.attach().await;
    // Even channels are the host's: the bridge answers each open with a
    // close, and the guest reads none of them while it floods.
    let open = F::Open {
        channel: 2,
        port: 9,
    }
    .encode();
    let close_len = F::Close { channel: 2 }.encode().len();
    let sent = 3 * QUEUE_LIMIT / close_len;
    let flood: Vec<u8> = open
        .iter()
        .copied()
        .cycle()
        .take(open.len() * sent)
        .collect();
    tokio::time::timeout(Duration::from_secs(60), guest.stream.write_all(&flood))
        .await
        .expect("the bridge goes on reading a guest that does not read")
        .expect("write");
    let mut closes = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), guest.stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        for frame in guest.decoder.feed(&buf[..n]).into_iter().flatten() {
            if let F::Close { channel: 2 } = frame {
                closes += 1;
            }
        }
    }
    // Answers stopped at the bound (plus what the socket itself held).
    assert!(closes > 0, "no answer at all");
    assert!(
        closes * close_len <= QUEUE_LIMIT + (1 << 20),
        "{closes} answers of {sent}: the queue outgrew its bound"
    );
    // And the port still serves a client.
    let ((mut c, reply), channel) = tokio::join!(client(&uds, 1024), async {
        loop {
            if let F::Open { channel, .. } = guest.next().await {
                guest.send(F::Accept { channel }).await;
                return channel;
            }
        }
    });
    assert_eq!(reply, "OK 1024");
    c.write_all(b"still here").await.expect("w");
    assert_eq!(
        guest.next().await,
        F::Data {
            channel,
            bytes: b"still here".to_vec()
        }
    );
}
