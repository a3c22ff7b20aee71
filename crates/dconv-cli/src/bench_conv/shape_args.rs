//! Parsers for the shape and range flags of `bench-conv`; each error is one readable line.

/// `K` for both axes, or `HxW`.
pub fn pair(text: &str) -> Result<[usize; 2], String> {
    let values = numbers(text, 'x')?;
    match values[..] {
        [v] => Ok([v, v]),
        [h, w] => Ok([h, w]),
        _ => Err(format!("expected N or HxW, got '{text}'")),
    }
}

/// Padding as `[top, left, bottom, right]` from `P` (all sides), `PHxPW` (top and bottom,
/// left and right) or `TOP,LEFT,BOTTOM,RIGHT`.
pub fn padding(text: &str) -> Result<[usize; 4], String> {
    let separator = if text.contains(',') { ',' } else { 'x' };
    let values = numbers(text, separator)?;
    match values[..] {
        [p] => Ok([p; 4]),
        [h, w] if separator == 'x' => Ok([h, w, h, w]),
        [top, left, bottom, right] if separator == ',' => Ok([top, left, bottom, right]),
        _ => Err(format!(
            "expected P, PHxPW or TOP,LEFT,BOTTOM,RIGHT, got '{text}'"
        )),
    }
}

/// A fraction in [0, 1].
pub fn fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number in [0, 1], got '{text}'"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside [0, 1]"))
    }
}

/// A count of at least 1.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("expected a whole number, got '{text}'")),
    }
}

fn numbers(text: &str, separator: char) -> Result<Vec<usize>, String> {
    text.split(separator)
        .map(|part| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{part}' in '{text}' is not a whole number"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_in_every_form() {
        assert_eq!(pair("3"), Ok([3, 3]));
        assert_eq!(pair("3x1"), Ok([3, 1]));
        assert_eq!(padding("1"), Ok([1; 4]));
        assert_eq!(padding("1x2"), Ok([1, 2, 1, 2]));
        assert_eq!(padding("0,1,2,3"), Ok([0, 1, 2, 3]));
        for bad in ["", "x", "3x", "1x2x3", "-1", "a"] {
            assert!(pair(bad).is_err(), "{bad}");
        }
        for bad in ["1,2", "1x2x3x4", "1,2,3", "1,2,3,4,5"] {
            assert!(padding(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_are_enforced() {
        assert_eq!(fraction("0.7"), Ok(0.7));
        assert_eq!(fraction("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "x"] {
            assert!(fraction(bad).is_err(), "{bad}");
        }
        assert_eq!(positive("4"), Ok(4));
        assert!(positive("0").is_err());
    }
}
