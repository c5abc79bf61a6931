//! The proxy's `/metrics` read as numbers: each sample by name and labels, for tests that
//! check what a request was counted as (tests/metrics.rs checks the format itself).

use std::collections::BTreeMap;

use reqwest::Method;

use crate::proxy::Proxy;

/// One scrape: every sample's value by its name and its labels (sorted by name).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: BTreeMap<(String, Vec<(String, String)>), f64>,
    /// The text as scraped, for failure messages.
    pub text: String,
}

impl Samples {
    /// Scrapes `GET /metrics` with the admin token.
    ///
    /// # Panics
    /// When the admin listener does not answer 200.
    pub async fn scrape(proxy: &Proxy) -> Samples {
        let response = proxy
            .admin_request(Method::GET, "/metrics")
            .bearer_auth(proxy.token())
            .send()
            .await
            .expect("the admin listener answers");
        assert!(response.status().is_success(), "GET /metrics: {response:?}");
        let text = response.text().await.expect("the metrics body is text");
        Samples::parse(&text)
    }

    /// Reads `name{label="value",...} number` lines; anything else is skipped.
    pub fn parse(text: &str) -> Samples {
        let mut values = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut labels: Vec<(String, String)> = labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            labels.sort();
            values.insert((name.to_owned(), labels), value);
        }
        Samples {
            values,
            text: text.to_owned(),
        }
    }

    /// The sample `name` with exactly `labels` (in any order); 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.values
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The sum of every sample `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values
            .iter()
            .filter(|((n, have), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }
}
