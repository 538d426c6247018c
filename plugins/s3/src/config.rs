//! Where the credentials, the region and the endpoint come from when the
//! command line does not give them: the `AWS_*` environment and the AWS
//! shared files (`~/.aws/credentials`, `~/.aws/config`), in the order the
//! AWS SDKs (boto3, which nbdkit's plugin uses) look at them.

use std::collections::HashMap;
use std::path::PathBuf;

/// A key pair, with the session token of temporary credentials.
#[derive(Clone, Default)]
pub(crate) struct Keys {
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
    pub(crate) session_token: Option<String>,
}

/// One INI file of AWS's: section name -> (key -> value).
type Ini = HashMap<String, HashMap<String, String>>;

/// Parse an AWS shared file. Unreadable or absent: empty. Keys are
/// lower-cased (the SDKs accept any case); nested sub-sections
/// (`s3 =` followed by indented lines) are skipped.
fn parse_ini(text: &str) -> Ini {
    let mut ini = Ini::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim().to_string();
            ini.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        if indented {
            continue;
        }
        let (Some(sec), Some((k, v))) = (&section, l.split_once('=')) else {
            continue;
        };
        // A value may carry a trailing comment after whitespace.
        let v = v.trim();
        let v = v
            .find(" #")
            .or_else(|| v.find(" ;"))
            .map_or(v, |i| v[..i].trim_end());
        ini.entry(sec.clone())
            .or_default()
            .insert(k.trim().to_ascii_lowercase(), v.to_string());
    }
    ini
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(var: &str, default: &str) -> PathBuf {
    if let Some(p) = env(var) {
        return PathBuf::from(p);
    }
    let home = env("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".aws").join(default)
}

/// The shared credentials and config files, as read once.
pub(crate) struct Shared {
    pub(crate) credentials_path: PathBuf,
    pub(crate) config_path: PathBuf,
    credentials: Ini,
    config: Ini,
}

impl Shared {
    pub(crate) fn load() -> Shared {
        let credentials_path = home_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_path = home_file("AWS_CONFIG_FILE", "config");
        let read = |p: &PathBuf| std::fs::read_to_string(p).map(|t| parse_ini(&t));
        Shared {
            credentials: read(&credentials_path).unwrap_or_default(),
            config: read(&config_path).unwrap_or_default(),
            credentials_path,
            config_path,
        }
    }

    /// The config file's section of `profile`: `[default]` or `[profile NAME]`
    /// (a plain `[NAME]` is accepted too).
    fn config_section(&self, profile: &str) -> Option<&HashMap<String, String>> {
        if profile == "default" {
            self.config.get("default")
        } else {
            self.config
                .get(&format!("profile {profile}"))
                .or_else(|| self.config.get(profile))
        }
    }

    /// Whether either file has this profile.
    pub(crate) fn has_profile(&self, profile: &str) -> bool {
        self.credentials.contains_key(profile) || self.config_section(profile).is_some()
    }

    /// A setting of `profile`: the credentials file first, then the config file.
    fn get(&self, profile: &str, key: &str) -> Option<String> {
        self.credentials
            .get(profile)
            .and_then(|s| s.get(key))
            .or_else(|| self.config_section(profile).and_then(|s| s.get(key)))
            .filter(|v| !v.is_empty())
            .cloned()
    }

    /// The key pair of `profile`, when it has one.
    pub(crate) fn keys(&self, profile: &str) -> Option<Keys> {
        let access_key = self.get(profile, "aws_access_key_id")?;
        let secret_key = self.get(profile, "aws_secret_access_key")?;
        let session_token = self
            .get(profile, "aws_session_token")
            .or_else(|| self.get(profile, "aws_security_token"));
        Some(Keys {
            access_key,
            secret_key,
            session_token,
        })
    }

    pub(crate) fn region(&self, profile: &str) -> Option<String> {
        self.get(profile, "region")
    }

    pub(crate) fn endpoint_url(&self, profile: &str) -> Option<String> {
        self.get(profile, "endpoint_url")
    }
}

/// The profile named by `profile=`, else `AWS_PROFILE`
/// (`AWS_DEFAULT_PROFILE`), else `default`; and whether it was named.
pub(crate) fn profile_name(param: Option<&str>) -> (String, bool) {
    match param
        .map(str::to_string)
        .or_else(|| env("AWS_PROFILE"))
        .or_else(|| env("AWS_DEFAULT_PROFILE"))
    {
        Some(p) => (p, true),
        None => ("default".into(), false),
    }
}

/// Credentials from the environment.
pub(crate) fn env_keys() -> Option<Keys> {
    let access_key = env("AWS_ACCESS_KEY_ID").or_else(|| env("AWS_ACCESS_KEY"))?;
    let secret_key = env("AWS_SECRET_ACCESS_KEY").or_else(|| env("AWS_SECRET_KEY"))?;
    Some(Keys {
        access_key,
        secret_key,
        session_token: env("AWS_SESSION_TOKEN").or_else(|| env("AWS_SECURITY_TOKEN")),
    })
}

pub(crate) fn env_region() -> Option<String> {
    env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"))
}

pub(crate) fn env_endpoint_url() -> Option<String> {
    env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini() {
        let i = parse_ini(
            "# c\n[default]\naws_access_key_id = A\nAWS_Secret_Access_Key=B  # note\n\
             [profile p]\nregion = eu-west-1\ns3 =\n  addressing_style = path\n",
        );
        assert_eq!(i["default"]["aws_access_key_id"], "A");
        assert_eq!(i["default"]["aws_secret_access_key"], "B");
        assert_eq!(i["profile p"]["region"], "eu-west-1");
        assert!(!i["profile p"].contains_key("addressing_style"));
    }
}
