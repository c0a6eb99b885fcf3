//! `skiff mcp`: a Model Context Protocol server on stdio (JSON-RPC 2.0, one
//! message per line) that gives an AI agent sandboxes of the daemon's
//! pools: run code in a fresh one, or create one and exec, read, write and
//! list files in it, then remove it. The tools act only on sandboxes this
//! server made (an agent cannot reach the user's other VMs), output is
//! capped, and no host path is ever shown.

use crate::cli_mcp_output::Ran;
use crate::client::Client;
use anyhow::{anyhow, bail, Result};
use hyper::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Output kept per stream unless a call asks for less (or more, up to
/// [`MAX_OUTPUT_CAP`]).
const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;
const MAX_OUTPUT_CAP: usize = 1024 * 1024;
/// A command's time limit unless a call names one.
const DEFAULT_TIMEOUT_SECS: f64 = 60.0;
/// The MCP revision answered when a client asks for one we do not know.
const PROTOCOL: &str = "2025-11-25";
/// The longest line (one JSON-RPC message) read from the client.
const MAX_LINE: usize = 8 << 20;

#[derive(clap::Args)]
pub(crate) struct McpArgs {
    /// A pool the tools may take sandboxes from (repeat for several); the
    /// first is the one used when a call names none. No other pool (and
    /// no other VM) is reachable through the tools.
    #[arg(long = "pool", value_name = "POOL", required = true)]
    pub(crate) pools: Vec<String>,
    /// Serve MCP's streamable HTTP transport (`POST /mcp`) on this loopback
    /// address instead of stdio; each client session has its own sandboxes.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// With --listen: the bearer tokens HTTP clients must send, one per
    /// line (`#` starts a comment); at least 16 characters each.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub(crate) tokens: Option<std::path::PathBuf>,
}

/// Sandboxes one server may hold at once.
const MAX_SANDBOXES: usize = 16;
/// The longest time limit of a command over stdio (a day).
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// The longest life a tool may give a sandbox (an hour).
const MAX_TTL_SECS: u64 = 3600;

pub(crate) struct Server {
    client: Client,
    /// The pools allowed, the default first.
    pools: Vec<String>,
    /// The sandboxes this server made and has not removed.
    mine: BTreeSet<String>,
    /// Its client went: it makes no more sandboxes.
    closed: bool,
    /// The longest time limit a command may have (over HTTP, less than
    /// the clients' read timeout).
    max_timeout_secs: f64,
}

/// The tools, as `tools/list` answers them.
fn tools() -> Value {
    let sandbox = json!({"type": "string", "description": "A sandbox made by create_sandbox"});
    let timeout = json!({"type": "number", "description": "Seconds before the command is killed (default 60)"});
    let cap = json!({"type": "integer", "description": "Bytes of stdout and of stderr kept (default 65536, at most 1048576)"});
    json!([
        {
            "name": "run_code",
            "description": "Run code in a fresh sandbox that is removed afterwards. Returns stdout, stderr and the exit code.",
            "inputSchema": {"type": "object", "required": ["language", "code"], "properties": {
                "language": {"type": "string", "enum": ["python", "node", "shell"]},
                "code": {"type": "string"},
                "pool": {"type": "string", "description": "The pool to take the sandbox from (default: the server's --pool)"},
                "timeout_secs": timeout, "max_output_bytes": cap}},
            "annotations": {"readOnlyHint": false, "destructiveHint": false, "openWorldHint": true}
        },
        {
            "name": "create_sandbox",
            "description": "Take a sandbox from a pool for several calls; remove it with remove_sandbox when done (it also ends at its time to live).",
            "inputSchema": {"type": "object", "properties": {
                "pool": {"type": "string"},
                "ttl_secs": {"type": "integer", "description": "How long it lives (default: the pool's)"}}},
            "annotations": {"readOnlyHint": false, "destructiveHint": false}
        },
        {
            "name": "list_sandboxes",
            "description": "The sandboxes this server made that still exist.",
            "inputSchema": {"type": "object", "properties": {}},
            "annotations": {"readOnlyHint": true}
        },
        {
            "name": "remove_sandbox",
            "description": "Remove a sandbox and everything in it.",
            "inputSchema": {"type": "object", "required": ["sandbox"], "properties": {"sandbox": sandbox}},
            "annotations": {"readOnlyHint": false, "destructiveHint": true, "idempotentHint": true}
        },
        {
            "name": "exec",
            "description": "Run a shell command (sh -c) in a sandbox. Returns stdout, stderr and the exit code.",
            "inputSchema": {"type": "object", "required": ["sandbox", "command"], "properties": {
                "sandbox": sandbox, "command": {"type": "string"},
                "timeout_secs": timeout, "max_output_bytes": cap}},
            "annotations": {"readOnlyHint": false, "destructiveHint": true, "openWorldHint": true}
        },
        {
            "name": "read_file",
            "description": "Read a text file of a sandbox (at most max_bytes are read).",
            "inputSchema": {"type": "object", "required": ["sandbox", "path"], "properties": {
                "sandbox": sandbox, "path": {"type": "string"}, "max_bytes": cap}},
            "annotations": {"readOnlyHint": true}
        },
        {
            "name": "write_file",
            "description": "Write a text file in a sandbox, replacing it if it exists (missing directories are made).",
            "inputSchema": {"type": "object", "required": ["sandbox", "path", "content"], "properties": {
                "sandbox": sandbox, "path": {"type": "string"}, "content": {"type": "string"}}},
            "annotations": {"readOnlyHint": false, "destructiveHint": true, "idempotentHint": true}
        },
        {
            "name": "list_files",
            "description": "List a directory of a sandbox: one line per entry with its kind (file, dir, symlink), size and path.",
            "inputSchema": {"type": "object", "required": ["sandbox", "path"], "properties": {
                "sandbox": sandbox, "path": {"type": "string"},
                "depth": {"type": "integer", "description": "Levels down to list (default 1, at most 8)"}}},
            "annotations": {"readOnlyHint": true}
        }
    ])
}

/// The program and arguments that run `code` in `language`.
fn code_argv(language: &str, code: &str) -> Result<Vec<String>> {
    let (prog, flag) = match language {
        "python" => ("python3", "-c"),
        "node" => ("node", "-e"),
        "shell" => ("sh", "-c"),
        other => bail!("language {other:?} is not one of python, node, shell"),
    };
    Ok(vec![prog.into(), flag.into(), code.into()])
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str> {
    args[key]
        .as_str()
        .ok_or_else(|| anyhow!("the argument {key:?} is missing (a string)"))
}

fn output_cap(args: &Value, key: &str) -> usize {
    args[key].as_u64().map_or(DEFAULT_OUTPUT_CAP, |n| {
        (n as usize).clamp(1, MAX_OUTPUT_CAP)
    })
}

impl Server {
    fn vm_path(vm: &str, rest: &str) -> String {
        format!("/v1/vms/{vm}{rest}")
    }

    fn owned<'a>(&self, args: &'a Value) -> Result<&'a str> {
        let name = str_arg(args, "sandbox")?;
        if !self.mine.contains(name) {
            bail!("no sandbox {name:?} of this session (list_sandboxes shows them; create one with create_sandbox)");
        }
        Ok(name)
    }

    async fn take(&mut self, args: &Value) -> Result<String> {
        let pool = match args["pool"].as_str() {
            Some(p) if self.pools.iter().any(|allowed| allowed == p) => p.to_owned(),
            Some(p) => bail!(
                "pool {p:?} is not one this server may use ({})",
                self.pools.join(", ")
            ),
            None => self
                .pools
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("this server has no pool (`skiff mcp --pool NAME`)"))?,
        };
        if self.closed {
            bail!("this session has ended");
        }
        if self.mine.len() >= MAX_SANDBOXES {
            bail!("this session holds {MAX_SANDBOXES} sandboxes already; remove some with remove_sandbox");
        }
        let mut body = json!({ "wait_secs": 60 });
        if let Some(ttl) = args["ttl_secs"].as_u64() {
            body["ttl_secs"] = json!(ttl.clamp(1, MAX_TTL_SECS));
        }
        let bytes = self
            .client
            .call(Method::POST, &format!("/v1/pools/{pool}/take"), Some(body))
            .await?;
        let taken: skiff_api::Sandbox = serde_json::from_slice(&bytes)?;
        self.mine.insert(taken.vm.clone());
        Ok(taken.vm)
    }

    /// Remove `vm`; it is forgotten once the daemon has removed it (or
    /// has no such VM), so a failed removal is tried again at the close.
    async fn remove(&mut self, vm: &str) -> Result<()> {
        let removed = self
            .client
            .call(
                Method::DELETE,
                &Self::vm_path(vm, "?force=true&volumes=true"),
                None,
            )
            .await;
        match removed {
            Ok(_) => {
                self.mine.remove(vm);
                Ok(())
            }
            Err(e) if format!("{e:#}").contains("(HTTP 404)") => {
                self.mine.remove(vm);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Run `argv`, keeping at most `cap` bytes of each output stream (the
    /// rest is counted as it streams by, never held).
    async fn run(&self, vm: &str, argv: Vec<String>, timeout: f64, cap: usize) -> Result<Ran> {
        use http_body_util::BodyExt;
        let body = json!({ "argv": argv, "timeout_secs": timeout });
        let mut events = self
            .client
            .post_stream(&Self::vm_path(vm, "/commands"), body)
            .await?;
        let mut ran = Ran::new(cap);
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = events.frame().await {
            let frame = frame.map_err(|e| anyhow!("the command's output broke off: {e}"))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                ran.take_event(&line[..end])?;
            }
            if pending.len() > MAX_LINE {
                bail!("the daemon sent an event line over 8 MiB");
            }
        }
        if !pending.iter().all(u8::is_ascii_whitespace) {
            ran.take_event(&pending)?;
        }
        Ok(ran)
    }

    fn timeout(&self, args: &Value) -> f64 {
        args["timeout_secs"]
            .as_f64()
            .filter(|t| *t > 0.0)
            .map_or(DEFAULT_TIMEOUT_SECS, |t| t.min(self.max_timeout_secs))
    }

    /// One tool call: its text and whether it is an error.
    async fn call(&mut self, name: &str, args: &Value) -> Result<(String, bool)> {
        match name {
            "run_code" => {
                let argv = code_argv(str_arg(args, "language")?, str_arg(args, "code")?)?;
                let vm = self.take(args).await?;
                let cap = output_cap(args, "max_output_bytes");
                let ran = self.run(&vm, argv, self.timeout(args), cap).await;
                // Removed whatever the code did.
                let removed = self.remove(&vm).await;
                let ran = ran?;
                removed?;
                Ok(ran.report())
            }
            "create_sandbox" => {
                let vm = self.take(args).await?;
                Ok((format!("sandbox {vm} is ready"), false))
            }
            "list_sandboxes" => {
                let mut alive = Vec::new();
                for vm in self.mine.clone() {
                    match self
                        .client
                        .call(Method::GET, &Self::vm_path(&vm, ""), None)
                        .await
                    {
                        // Ended at its time to live: forgotten.
                        Err(e) if format!("{e:#}").contains("(HTTP 404)") => {
                            self.mine.remove(&vm);
                        }
                        // Alive, or the daemon did not answer this time.
                        _ => alive.push(vm),
                    }
                }
                let text = if alive.is_empty() {
                    "no sandboxes".to_owned()
                } else {
                    alive.join("\n")
                };
                Ok((text, false))
            }
            "remove_sandbox" => {
                let vm = self.owned(args)?.to_owned();
                self.remove(&vm).await?;
                Ok((format!("sandbox {vm} removed"), false))
            }
            "exec" => {
                let vm = self.owned(args)?;
                let argv = vec!["sh".into(), "-c".into(), str_arg(args, "command")?.into()];
                let cap = output_cap(args, "max_output_bytes");
                let ran = self.run(vm, argv, self.timeout(args), cap).await?;
                Ok(ran.report())
            }
            "read_file" => {
                let vm = self.owned(args)?;
                let cap = output_cap(args, "max_bytes");
                let text =
                    crate::cli_mcp_files::read(&self.client, vm, str_arg(args, "path")?, cap);
                Ok((text.await?, false))
            }
            "write_file" => {
                let vm = self.owned(args)?;
                let (path, content) = (str_arg(args, "path")?, str_arg(args, "content")?);
                let text = crate::cli_mcp_files::write(&self.client, vm, path, content).await?;
                Ok((text, false))
            }
            "list_files" => {
                let vm = self.owned(args)?;
                let depth = args["depth"].as_u64().unwrap_or(1);
                let text =
                    crate::cli_mcp_files::list(&self.client, vm, str_arg(args, "path")?, depth);
                Ok((text.await?, false))
            }
            other => bail!("no tool {other:?} (tools/list names them)"),
        }
    }
}

/// A JSON-RPC error answer.
fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

/// The answer to one message (None for a notification).
pub(crate) async fn answer(server: &mut Server, msg: &Value) -> Option<Value> {
    let id = msg.get("id").cloned()?;
    let method = msg["method"].as_str().unwrap_or("");
    let result = match method {
        "initialize" => {
            let asked = msg["params"]["protocolVersion"]
                .as_str()
                .unwrap_or(PROTOCOL);
            let known = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
            let version = if known.contains(&asked) {
                asked
            } else {
                PROTOCOL
            };
            json!({
                "protocolVersion": version,
                "capabilities": { "tools": { "listChanged": false } },
                "serverInfo": { "name": "skiff", "version": env!("CARGO_PKG_VERSION") },
                "instructions": "Sandboxes are throw-away Linux microVMs. run_code runs code in a fresh one; for several steps, create_sandbox, then exec/read_file/write_file/list_files, then remove_sandbox."
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({ "tools": tools() }),
        "tools/call" => {
            let name = msg["params"]["name"].as_str().unwrap_or("");
            let args = msg["params"].get("arguments").cloned().unwrap_or(json!({}));
            let (text, is_error) = match server.call(name, &args).await {
                Ok(r) => r,
                Err(e) => (format!("{e:#}"), true),
            };
            json!({ "content": [{ "type": "text", "text": text }], "isError": is_error })
        }
        "" => return Some(rpc_error(&id, -32600, "not a request: it has no method")),
        other => return Some(rpc_error(&id, -32601, &format!("no method {other:?}"))),
    };
    Some(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

impl Server {
    /// A server whose commands may run at most `max_timeout_secs`.
    pub(crate) fn new(client: Client, pools: Vec<String>, max_timeout_secs: f64) -> Server {
        Server {
            client,
            pools,
            mine: BTreeSet::new(),
            closed: false,
            max_timeout_secs,
        }
    }

    /// Remove every sandbox this server made (its client went away), and
    /// make no more.
    pub(crate) async fn close(&mut self) {
        self.closed = true;
        for vm in self.mine.clone() {
            if let Err(e) = self.remove(&vm).await {
                // stderr: `skiff mcp` sets up no log; stdio's stdout is the protocol's.
                eprintln!(
                    "skiff mcp: cannot remove sandbox {vm}: {e:#} (it ends at its time to live)"
                );
            }
        }
    }
}

pub(crate) async fn serve(client: Client, args: McpArgs) -> Result<i32> {
    if let Some(addr) = args.listen {
        let Some(tokens) = args.tokens else {
            bail!("--listen {addr} needs --tokens FILE: the bearer tokens its clients must send (for example `openssl rand -hex 24 > FILE`)");
        };
        return crate::cli_mcp_http::serve(client, args.pools, addr, &tokens).await;
    }
    let mut server = Server::new(client, args.pools, MAX_TIMEOUT_SECS);
    let mut lines = BufReader::new(tokio::io::stdin());
    let mut out = tokio::io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            break;
        }
        let reply = if n > MAX_LINE {
            // The rest of this line is not a message of its own.
            let mut rest = Vec::new();
            lines.read_until(b'\n', &mut rest).await?;
            Some(rpc_error(&Value::Null, -32600, "the message is over 8 MiB"))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match serde_json::from_slice::<Value>(&line) {
                Ok(msg) => answer(&mut server, &msg).await,
                Err(e) => Some(rpc_error(&Value::Null, -32700, &format!("not JSON: {e}"))),
            }
        };
        if let Some(r) = reply {
            let mut text = r.to_string();
            text.push('\n');
            out.write_all(text.as_bytes()).await?;
            out.flush().await?;
        }
    }
    // The client went away: its sandboxes go too.
    server.close().await;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server::new(
            Client::new("/nonexistent/skiff.sock".into()),
            Vec::new(),
            MAX_TIMEOUT_SECS,
        )
    }

    #[tokio::test]
    async fn initialize_and_tools_list_describe_the_server() {
        let mut s = server();
        let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}});
        let r = answer(&mut s, &init).await.expect("answer");
        assert_eq!(r["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(r["result"]["serverInfo"]["name"], "skiff");
        let notification = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        assert!(answer(&mut s, &notification).await.is_none());
        let list = answer(
            &mut s,
            &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        )
        .await
        .expect("list");
        let tools = list["result"]["tools"].as_array().expect("tools");
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "run_code",
                "create_sandbox",
                "list_sandboxes",
                "remove_sandbox",
                "exec",
                "read_file",
                "write_file",
                "list_files"
            ]
        );
        let destructive: Vec<&str> = tools
            .iter()
            .filter(|t| t["annotations"]["destructiveHint"] == true)
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(destructive, ["remove_sandbox", "exec", "write_file"]);
        let unknown = answer(
            &mut s,
            &json!({"jsonrpc":"2.0","id":3,"method":"resources/list"}),
        )
        .await
        .expect("err");
        assert_eq!(unknown["error"]["code"], -32601);
    }

    #[tokio::test]
    async fn tools_refuse_sandboxes_they_did_not_make_and_bad_arguments() {
        let mut s = server();
        let call = |name: &str, args: Value| json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":name,"arguments":args}});
        let r = answer(
            &mut s,
            &call("exec", json!({"sandbox":"prod-db","command":"rm -rf /"})),
        )
        .await
        .expect("answer");
        assert_eq!(r["result"]["isError"], true);
        let text = r["result"]["content"][0]["text"].as_str().expect("text");
        assert!(
            text.contains("no sandbox \"prod-db\" of this session"),
            "{text}"
        );
        let r = answer(
            &mut s,
            &call("run_code", json!({"language":"cobol","code":"x"})),
        )
        .await
        .expect("answer");
        assert!(r["result"]["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("cobol"));
        let r = answer(
            &mut s,
            &call("run_code", json!({"language":"python","code":"1"})),
        )
        .await
        .expect("answer");
        assert!(r["result"]["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("has no pool"));
        s.pools = vec!["agents".into()];
        let r = answer(&mut s, &call("create_sandbox", json!({"pool":"secrets"})))
            .await
            .expect("answer");
        let text = r["result"]["content"][0]["text"].as_str().expect("text");
        assert!(
            text.contains("pool \"secrets\" is not one this server may use (agents)"),
            "{text}"
        );
    }

    #[test]
    fn code_runs_by_its_language() {
        assert_eq!(
            code_argv("python", "print(1)").expect("py"),
            ["python3", "-c", "print(1)"]
        );
    }
}
