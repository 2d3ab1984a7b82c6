//! Plain-text tables for people: left-aligned columns, two spaces apart.

/// `headers` and `rows` as aligned lines, each ending in a newline.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        let cells: Vec<&str> = (0..columns).map(|i| row.get(i).map_or("", String::as_str)).collect();
        out.push_str(&line(cells));
    }
    out
}

/// The first `n` characters of a hex string, with an ellipsis.
pub fn short(hex: &str, n: usize) -> String {
    if hex.chars().count() <= n {
        hex.to_string()
    } else {
        format!("{}…", hex.chars().take(n).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(&["NODE", "STATE"], &[vec!["1".into(), "ready".into()], vec!["10".into(), "x".into()]]);
        assert_eq!(t, "NODE  STATE\n1     ready\n10    x\n");
        assert_eq!(short("abcdef", 4), "abcd…");
        assert_eq!(short("abc", 4), "abc");
    }
}
