//! `pushgate token`: print a bearer token (HS256 JWT, `iss` = app id, `iat` = now) for the HTTP API,
//! signed with the app's secret, valid for an hour: `curl -H "authorization: Bearer $(pushgate token)"`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::push::SECRET_ENV;
use crate::http::auth;

/// Where `pushgate serve` keeps the demo app's secret, used for `--app demo` when nothing else is given.
const DEMO_SECRET_FILE: &str = "pushgate-data/demo.secret";

/// Arguments of `pushgate token`.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// App id: the token's `iss`.
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// File holding the app secret [default: $PUSHGATE_APP_SECRET; for the demo app,
    /// pushgate-data/demo.secret].
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
}

pub fn run(args: &TokenArgs) -> ExitCode {
    match secret(args) {
        Ok(s) => {
            println!("{}", auth::sign(&args.app, s.as_bytes(), auth::now_s()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pushgate token: {e}");
            ExitCode::from(2)
        }
    }
}

fn secret(args: &TokenArgs) -> Result<String, String> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map(|s| s.trim().to_string()).map_err(|e| format!("{}: {e}", p.display()))
    };
    let s = match (&args.secret_file, std::env::var(SECRET_ENV)) {
        (Some(p), _) => read(p)?,
        (None, Ok(s)) => s,
        (None, Err(_)) if args.app == "demo" && std::path::Path::new(DEMO_SECRET_FILE).exists() => {
            read(&PathBuf::from(DEMO_SECRET_FILE))?
        }
        (None, Err(_)) => return Err(format!("give --secret-file or set {SECRET_ENV}")),
    };
    if s.is_empty() {
        return Err("the app secret is empty".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_signs_a_token_the_gateway_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "0123456789abcdef\n").unwrap();
        let args = TokenArgs { app: "a1".into(), secret_file: Some(p) };
        let s = secret(&args).unwrap();
        let mut apps = crate::proto::Apps::new();
        apps.add("a1", b"0123456789abcdef");
        let t = auth::sign(&args.app, s.as_bytes(), auth::now_s());
        assert_eq!(auth::verify(Some(format!("Bearer {t}").as_bytes()), &apps, auth::now_s()), Ok(0));
        let missing = TokenArgs { app: "a1".into(), secret_file: Some(dir.path().join("none")) };
        assert!(secret(&missing).is_err());
    }
}
