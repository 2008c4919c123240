//! What GitOps tools make of a live CloudImage, computed by their own code:
//! kstatus (`sigs.k8s.io/cli-utils`, behind Flux's health checks) through
//! the `kstatus-check` tool pinned in `testenv/go/kstatus/`, and the Argo CD
//! health script `deploy/argocd/health.lua` run by a real Lua 5.1, the
//! language version Argo CD embeds.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kube::Api;
use kube::core::{ApiResource, DynamicObject};
use mlua::{Lua, LuaOptions, StdLib};
use serde_json::Value;

use cloudimage_operator::crd::CloudImage;

use super::Scope;

/// What a tool said: its status word and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: String,
    pub message: String,
}

/// The object exactly as the API server serves it, as JSON (no Rust types
/// in between that could drop or reshape a field).
pub async fn live_json(s: &Scope, name: &str) -> Value {
    let ar = ApiResource::erase::<CloudImage>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &ar);
    let obj = api.get(name).await.expect("get CloudImage");
    serde_json::to_value(obj).expect("object as JSON")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `kstatus-check` binary: `testenv/build-tools.sh kstatus` builds it into
/// the test cache when it is missing (a no-op otherwise, serialised with the
/// other builds by the script's lock), and `build-tools.sh paths` names its
/// directory (`KSTATUS_BIN_DIR=`).
pub fn kstatus_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo().join("testenv/build-tools.sh");
        let build = Command::new(&script)
            .arg("kstatus")
            .stdin(Stdio::null())
            .output()
            .expect("run testenv/build-tools.sh kstatus");
        assert!(
            build.status.success(),
            "testenv/build-tools.sh kstatus failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let paths = Command::new(&script)
            .arg("paths")
            .stdin(Stdio::null())
            .output()
            .expect("run testenv/build-tools.sh paths");
        assert!(paths.status.success(), "build-tools.sh paths failed");
        let dir = String::from_utf8_lossy(&paths.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("KSTATUS_BIN_DIR=").map(str::to_owned))
            .expect("build-tools.sh paths names KSTATUS_BIN_DIR");
        let bin = PathBuf::from(dir).join("kstatus-check");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// What kstatus (`status.Compute`) says of `obj`: Current, InProgress,
/// Failed, Terminating, ...
pub fn kstatus(obj: &Value) -> Verdict {
    let mut child = Command::new(kstatus_bin())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kstatus-check");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(obj.to_string().as_bytes())
        .expect("write the object to kstatus-check");
    let out = child.wait_with_output().expect("kstatus-check runs");
    assert!(
        out.status.success(),
        "kstatus-check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("kstatus-check prints JSON");
    Verdict {
        status: v["status"].as_str().expect("status").to_owned(),
        message: v["message"].as_str().expect("message").to_owned(),
    }
}

/// `deploy/argocd/health.lua`.
pub fn health_lua() -> String {
    std::fs::read_to_string(repo().join("deploy/argocd/health.lua")).expect("health.lua")
}

/// What the Argo CD health script says of `obj`. The script runs as Argo CD
/// runs it: Lua 5.1, `obj` a global table converted from the object's JSON
/// (null becomes nil, arrays 1-based tables), a returned table with `status`
/// and `message`. Only the base and `table` libraries are open, fewer than
/// Argo CD's default set, so a script that needs another one fails here too.
pub fn argocd_health(obj: &Value) -> Verdict {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::new()).expect("Lua 5.1");
    let table = to_lua(&lua, obj);
    lua.globals().set("obj", table).expect("set obj");
    let hs: mlua::Table = lua
        .load(health_lua())
        .set_name("health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("health.lua failed on {obj}: {e}"));
    let field = |k: &str| -> String {
        hs.get::<Option<String>>(k)
            .unwrap_or_else(|e| panic!("health.lua returned a bad {k}: {e}"))
            .unwrap_or_default()
    };
    Verdict {
        status: field("status"),
        message: field("message"),
    }
}

/// JSON to Lua values the way Argo CD hands objects to health scripts.
fn to_lua(lua: &Lua, v: &Value) -> mlua::Value {
    match v {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().expect("a JSON number")),
        Value::String(s) => mlua::Value::String(lua.create_string(s).expect("string")),
        Value::Array(items) => {
            let t = lua.create_table().expect("table");
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)).expect("array item");
            }
            mlua::Value::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table().expect("table");
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua(lua, item)).expect("field");
            }
            mlua::Value::Table(t)
        }
    }
}
