//! `skiff mcp`: a Model Context Protocol server on stdio (JSON-RPC 2.0, one
//! message per line) that gives an AI agent sandboxes of the daemon's
//! pools: run code in a fresh one, or create one and exec, read, write and
//! list files in it, then remove it. The tools act only on sandboxes this
//! server made (an agent cannot reach the user's other VMs), output is
//! capped, and no host path is ever shown.

use crate::client::Client;
use anyhow::{anyhow, bail, Result};
use base64::Engine;
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
}

/// Sandboxes one server may hold at once.
const MAX_SANDBOXES: usize = 16;
/// The longest life a tool may give a sandbox (an hour).
const MAX_TTL_SECS: u64 = 3600;

struct Server {
    client: Client,
    /// The pools allowed, the default first.
    pools: Vec<String>,
    /// The sandboxes this server made and has not removed.
    mine: BTreeSet<String>,
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
            "description": "Read a text file of a sandbox (capped at max_bytes).",
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
            "description": "List a directory of a sandbox (ls -la).",
            "inputSchema": {"type": "object", "required": ["sandbox", "path"], "properties": {
                "sandbox": sandbox, "path": {"type": "string"}}},
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

/// At most `cap` bytes of `bytes` as text, saying how much was cut.
fn capped(bytes: &[u8], cap: usize) -> String {
    if bytes.len() <= cap {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut text = String::from_utf8_lossy(&bytes[..cap]).into_owned();
    text.push_str(&format!(
        "\n[... {} more bytes not shown]",
        bytes.len() - cap
    ));
    text
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

/// What a command did: (stdout, stderr, exit code, timed out).
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: i64,
    timed_out: bool,
}

impl Ran {
    fn report(&self, cap: usize) -> (String, bool) {
        let mut text = format!("exit code: {}", self.exit_code);
        if self.timed_out {
            text.push_str(" (killed at its time limit)");
        }
        text.push_str(&format!("\n--- stdout ---\n{}", capped(&self.stdout, cap)));
        if !self.stderr.is_empty() {
            text.push_str(&format!("\n--- stderr ---\n{}", capped(&self.stderr, cap)));
        }
        (text, self.exit_code != 0 || self.timed_out)
    }
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

    async fn remove(&mut self, vm: &str) -> Result<()> {
        self.mine.remove(vm);
        self.client
            .call(
                Method::DELETE,
                &Self::vm_path(vm, "?force=true&volumes=true"),
                None,
            )
            .await?;
        Ok(())
    }

    async fn run(
        &self,
        vm: &str,
        argv: Vec<String>,
        stdin: Option<&[u8]>,
        timeout: f64,
    ) -> Result<Ran> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body = json!({ "argv": argv, "timeout_secs": timeout });
        if let Some(input) = stdin {
            body["stdin"] = json!(b64.encode(input));
        }
        let bytes = self
            .client
            .call(Method::POST, &Self::vm_path(vm, "/commands"), Some(body))
            .await?;
        let mut ran = Ran {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: -1,
            timed_out: false,
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let ev: Value = serde_json::from_slice(line)?;
            let data = || {
                b64.decode(ev["data"].as_str().unwrap_or(""))
                    .unwrap_or_default()
            };
            match ev["type"].as_str() {
                Some("stdout") => ran.stdout.extend(data()),
                Some("stderr") => ran.stderr.extend(data()),
                Some("exit") => {
                    ran.exit_code = ev["exit_code"].as_i64().unwrap_or(-1);
                    ran.timed_out = ev["timed_out"].as_bool().unwrap_or(false);
                }
                Some("error") => {
                    bail!("{}", ev["message"].as_str().unwrap_or("the command failed"))
                }
                _ => {}
            }
        }
        Ok(ran)
    }

    fn timeout(args: &Value) -> f64 {
        args["timeout_secs"]
            .as_f64()
            .filter(|t| *t > 0.0)
            .map_or(DEFAULT_TIMEOUT_SECS, |t| t.min(86_400.0))
    }

    /// One tool call: its text and whether it is an error.
    async fn call(&mut self, name: &str, args: &Value) -> Result<(String, bool)> {
        match name {
            "run_code" => {
                let argv = code_argv(str_arg(args, "language")?, str_arg(args, "code")?)?;
                let vm = self.take(args).await?;
                let ran = self.run(&vm, argv, None, Self::timeout(args)).await;
                // Removed whatever the code did.
                let removed = self.remove(&vm).await;
                let ran = ran?;
                removed?;
                Ok(ran.report(output_cap(args, "max_output_bytes")))
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
                let ran = self.run(vm, argv, None, Self::timeout(args)).await?;
                Ok(ran.report(output_cap(args, "max_output_bytes")))
            }
            "read_file" => {
                let vm = self.owned(args)?;
                let argv = vec!["cat".into(), "--".into(), str_arg(args, "path")?.into()];
                let ran = self.run(vm, argv, None, DEFAULT_TIMEOUT_SECS).await?;
                if ran.exit_code != 0 {
                    return Ok((String::from_utf8_lossy(&ran.stderr).trim().to_owned(), true));
                }
                Ok((capped(&ran.stdout, output_cap(args, "max_bytes")), false))
            }
            "write_file" => {
                let vm = self.owned(args)?;
                let path = str_arg(args, "path")?;
                let content = str_arg(args, "content")?;
                let script = "mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1\"";
                let argv = vec![
                    "sh".into(),
                    "-c".into(),
                    script.into(),
                    "sh".into(),
                    path.into(),
                ];
                let ran = self
                    .run(vm, argv, Some(content.as_bytes()), DEFAULT_TIMEOUT_SECS)
                    .await?;
                if ran.exit_code != 0 {
                    return Ok((String::from_utf8_lossy(&ran.stderr).trim().to_owned(), true));
                }
                Ok((format!("wrote {} bytes to {path}", content.len()), false))
            }
            "list_files" => {
                let vm = self.owned(args)?;
                let argv = vec![
                    "ls".into(),
                    "-la".into(),
                    "--".into(),
                    str_arg(args, "path")?.into(),
                ];
                let ran = self.run(vm, argv, None, DEFAULT_TIMEOUT_SECS).await?;
                if ran.exit_code != 0 {
                    return Ok((String::from_utf8_lossy(&ran.stderr).trim().to_owned(), true));
                }
                Ok((capped(&ran.stdout, DEFAULT_OUTPUT_CAP), false))
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
async fn answer(server: &mut Server, msg: &Value) -> Option<Value> {
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

pub(crate) async fn serve(client: Client, args: McpArgs) -> Result<i32> {
    let mut server = Server {
        client,
        pools: args.pools,
        mine: BTreeSet::new(),
    };
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
    for vm in server.mine.clone() {
        let _ = server.remove(&vm).await;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server {
            client: Client::new("/nonexistent/skiff.sock".into()),
            pools: Vec::new(),
            mine: BTreeSet::new(),
        }
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
    fn output_is_capped_and_says_so() {
        assert_eq!(capped(b"short", 10), "short");
        assert_eq!(
            capped(b"0123456789abc", 10),
            "0123456789\n[... 3 more bytes not shown]"
        );
        assert_eq!(
            code_argv("python", "print(1)").expect("py"),
            ["python3", "-c", "print(1)"]
        );
    }
}
