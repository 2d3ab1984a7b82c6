//! The operator's cluster file (`mpc-cli.toml`): where each node's API is
//! and which file holds the operator's token.
//!
//! ```toml
//! token_file = "operator.token"      # relative to this file
//! [nodes]
//! 1 = "http://127.0.0.1:8101"
//! 2 = "http://127.0.0.1:8102"
//! ```

use super::client::{CliError, NodeClient};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    token_file: Option<PathBuf>,
    nodes: BTreeMap<String, String>,
}

/// A loaded cluster file, with the operator's token.
#[derive(Debug)]
pub struct Cluster {
    pub file: PathBuf,
    pub nodes: BTreeMap<u16, String>,
    pub token: Option<String>,
}

/// Where the token comes from, most specific first.
pub struct TokenSource {
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `MPC_TOKEN`.
    pub token_env: Option<String>,
}

impl Cluster {
    pub fn load(path: &Path, token: TokenSource) -> Result<Cluster, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Local(format!(
                "cannot read the cluster file {}: {e} (give --cluster FILE or set MPC_CLI_CLUSTER)",
                path.display()
            ))
        })?;
        Cluster::parse(path, &text, token)
    }

    pub fn parse(path: &Path, text: &str, token: TokenSource) -> Result<Cluster, CliError> {
        let bad = |what: String| CliError::Usage(format!("{}: {what}", path.display()));
        let file: File = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let mut nodes = BTreeMap::new();
        for (id, url) in file.nodes {
            let id: u16 = id.trim().parse().map_err(|_| bad(format!("nodes: {id:?} is not a node id")))?;
            let parsed = url::Url::parse(&url).map_err(|e| bad(format!("nodes.{id}: {url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad(format!("nodes.{id}: {url:?}: use http:// or https://")));
            }
            nodes.insert(id, url);
        }
        if nodes.is_empty() {
            return Err(bad("[nodes] lists no node".into()));
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let token = match (token.token_file, token.token_env, file.token_file) {
            (Some(f), _, _) => Some(read_token(&f)?),
            (None, Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
            (None, _, Some(f)) => Some(read_token(&if f.is_absolute() { f } else { base.join(f) })?),
            _ => None,
        };
        Ok(Cluster { file: path.to_path_buf(), nodes, token })
    }

    /// The client of node `id`, which must be in the file.
    pub fn client(&self, id: u16) -> Result<NodeClient, CliError> {
        let url = self.nodes.get(&id).ok_or_else(|| {
            CliError::Usage(format!(
                "node {id} is not in {} (it lists {})",
                self.file.display(),
                self.nodes.keys().map(u16::to_string).collect::<Vec<_>>().join(", ")
            ))
        })?;
        NodeClient::new(id, url, self.token.clone())
    }

    /// `--node`, or the lowest id in the file.
    pub fn selected(&self, node: Option<u16>) -> Result<NodeClient, CliError> {
        let id = node.or_else(|| self.nodes.keys().next().copied()).expect("parse refuses a file without nodes");
        self.client(id)
    }

    /// `--node` alone, or every node in the file.
    pub fn all_or(&self, node: Option<u16>) -> Result<Vec<NodeClient>, CliError> {
        match node {
            Some(id) => Ok(vec![self.client(id)?]),
            None => self.nodes.keys().map(|id| self.client(*id)).collect(),
        }
    }
}

fn read_token(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Local(format!("cannot read the token file {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(CliError::Local(format!("the token file {} is empty", path.display())));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> TokenSource {
        TokenSource { token_file: None, token_env: None }
    }

    #[test]
    fn a_cluster_file_lists_nodes_and_its_token_file_is_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("mpc-cli-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("op.token"), "secret-token\n").unwrap();
        let text = "token_file = \"op.token\"\n[nodes]\n2 = \"http://127.0.0.1:8102\"\n1 = \"http://127.0.0.1:8101\"\n";
        let c = Cluster::parse(&dir.join("mpc-cli.toml"), text, none()).unwrap();
        assert_eq!(c.nodes.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(c.token.as_deref(), Some("secret-token"));
        assert_eq!(c.selected(None).unwrap().id, 1, "the lowest id by default");
        assert_eq!(c.selected(Some(2)).unwrap().id, 2);
        assert_eq!(c.selected(Some(7)).unwrap_err().exit_code(), 2);
        let env = TokenSource { token_file: None, token_env: Some("from-env".into()) };
        assert_eq!(Cluster::parse(&dir.join("mpc-cli.toml"), text, env).unwrap().token.as_deref(), Some("from-env"));
        let missing = TokenSource { token_file: Some(dir.join("absent")), token_env: Some("from-env".into()) };
        assert_eq!(Cluster::parse(&dir.join("x.toml"), text, missing).unwrap_err().exit_code(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_cluster_file_is_a_usage_error() {
        let p = Path::new("c.toml");
        for text in [
            "[nodes]\n",
            "[nodes]\nx = \"http://a\"\n",
            "[nodes]\n1 = \"ftp://a\"\n",
            "nodes = 3\n",
            "typo = 1\n[nodes]\n1 = \"http://a\"\n",
        ] {
            assert_eq!(Cluster::parse(p, text, none()).unwrap_err().exit_code(), 2, "{text}");
        }
    }
}
