//! The field-level checks and parsers every section of the config shares: ranges, URLs,
//! blank values, environment variables and their secrets.

use super::ConfigError;
use crate::domain::Secret;

/// `value` if it lies in `range`, else the one-line error naming `field`.
pub(super) fn in_range(
    field: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    fix: &str,
) -> Result<u64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} is outside {}..={}", range.start(), range.end()),
            fix,
        ))
    }
}

/// The secret held by the environment variable that `field` names, if it names one.
pub(super) fn secret_from_env(
    field: &str,
    name: Option<String>,
    what: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    let Some(name) = non_empty(name) else {
        return Ok(None);
    };
    match non_empty(env(&name)) {
        Some(value) => Ok(Some(Secret::new(value))),
        None => Err(ConfigError::new(
            field,
            format!("names the environment variable {name}, which is not set"),
            format!(
                "export {name}=<{what}>, or remove {}",
                field.rsplit('.').next().unwrap_or(field)
            ),
        )),
    }
}

pub(super) fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub(super) fn parse_text(_name: &str, value: &str) -> Result<String, ConfigError> {
    Ok(value.to_string())
}

pub(super) fn parse_list(_name: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    Ok(value.split(',').map(str::to_string).collect())
}

pub(super) fn parse_port(name: &str, value: &str) -> Result<u16, ConfigError> {
    value.trim().parse().map_err(|_| {
        ConfigError::new(
            name,
            format!("{value:?} is not a port number"),
            "use a number from 1 to 65535, e.g. 9443",
        )
    })
}

pub(super) fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            name,
            format!("{value:?} is not a boolean"),
            "use true or false",
        )),
    }
}

pub(super) fn parse_u64(name: &str, value: &str) -> Result<u64, ConfigError> {
    value.trim().parse().map_err(|_| {
        ConfigError::new(
            name,
            format!("{value:?} is not a whole number"),
            "use digits only, e.g. 25",
        )
    })
}

pub(super) fn check_url(field: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let ok = schemes.iter().any(|s| {
        url.strip_prefix(s)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|host| !host.is_empty())
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{url:?} is not a {} URL", schemes.join(" or ")),
            format!("write it like {}://host:port/path", schemes[0]),
        ))
    }
}
