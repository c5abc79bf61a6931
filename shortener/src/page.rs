//! The HTML pages of the Flask-compatible routes: the form, the result, the error page.
//! Every value that reaches a page goes through [`escape`].

use std::fmt::Write;

use http::StatusCode;

/// What the form shows in its fields: empty on the home page, the user's input when it is shown
/// again with a message.
#[derive(Debug, Default, Clone, Copy)]
pub struct FormValues<'a> {
    pub url: &'a str,
    pub code: &'a str,
}

/// The home page: the form, with an optional message above it.
pub fn form(values: FormValues<'_>, message: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(message) = message {
        let _ = write!(
            body,
            r#"<p class="message" role="alert">{}</p>"#,
            escape(message)
        );
    }
    let _ = write!(
        body,
        r#"<form action="/your-url" method="post">
<p><label for="url">Website URL</label><br><input type="url" name="url" id="url" size="60" value="{url}" required></p>
<p><label for="code">Short name (optional)</label><br><input type="text" name="code" id="code" size="20" value="{code}"></p>
<p><input type="submit" value="Shorten"></p>
</form>"#,
        url = escape(values.url),
        code = escape(values.code),
    );
    layout("URL shortener", &body)
}

/// The page after a link was created: the full short link, and where it goes.
pub fn created(short_url: &str, long_url: &str) -> String {
    let body = format!(
        r#"<p>Your short link:</p>
<p><a id="short-url" href="{short}">{short}</a></p>
<p>It redirects to <a href="{long}">{long}</a>.</p>
<p><a href="/">Shorten another URL</a></p>"#,
        short = escape(short_url),
        long = escape(long_url),
    );
    layout("Your short link", &body)
}

/// An error page: the status and the message.
pub fn error(status: StatusCode, message: &str) -> String {
    let body = format!(
        r#"<p class="message" role="alert">{}</p>
<p><a href="/">Shorten a URL</a></p>"#,
        escape(message)
    );
    layout(&status.to_string(), &body)
}

fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"#,
        title = escape(title),
    )
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_input_is_escaped() {
        let page = form(
            FormValues {
                url: r#""><script>alert(1)</script>"#,
                code: "'&",
            },
            Some("<b>"),
        );
        assert!(!page.contains("<script>"));
        assert!(page.contains("&quot;&gt;&lt;script&gt;"));
        assert!(page.contains("&#39;&amp;"));
        assert!(page.contains("&lt;b&gt;"));
    }
}
