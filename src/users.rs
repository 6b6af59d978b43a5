//! `--user` values (SPEC §11): `USER[:GROUP]`, and their resolution to
//! numeric ids against the text of `/etc/passwd` and `/etc/group`. No I/O
//! here: the caller reads the files (and says when they do not exist).
//!
//! ```
//! use sidecar_init::users::{parse_user, resolve, Ids};
//!
//! let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/sbin/nologin\n";
//! let spec = parse_user("www").unwrap();
//! assert_eq!(resolve(&spec, Some(passwd), None), Ok(Ids { uid: 33, gid: 33 }));
//!
//! // A number needs no entry, and its group is never silently root's.
//! let spec = parse_user("1000").unwrap();
//! assert_eq!(resolve(&spec, None, None), Ok(Ids { uid: 1000, gid: 1000 }));
//! ```

use std::fmt;

use crate::grammar::printable;

/// `USER[:GROUP]` as written: each a name or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    /// A user name or a uid (all ASCII digits, below `u32::MAX`); never
    /// empty, holds no `:`, blank or control character.
    pub user: String,
    /// A group name or a gid, under the same rules as `user`; `None` when
    /// the group comes from the user.
    pub group: Option<String>,
}

/// Numeric ids to run a daemon as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    /// Never `u32::MAX` (which `setuid` reads as "no change").
    pub uid: u32,
    /// Never `u32::MAX`.
    pub gid: u32,
}

/// What `parse_user` takes, for its errors.
const USER_FORMS: &str = "USER, USER:GROUP, UID or UID:GID";

/// Parses `USER[:GROUP]`; outer blanks are trimmed. A part made of digits
/// only is a number (an id, whether or not an entry has it), and must be
/// below 4294967295; any other part is a name, which may not hold blanks or
/// control characters.
pub fn parse_user(text: &str) -> Result<UserSpec, String> {
    user_spec(text).map_err(|e| printable(&e))
}

fn user_spec(text: &str) -> Result<UserSpec, String> {
    let t = text.trim();
    let (user, group) = match t.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (t, None),
    };
    let check = |part: &str, what: &str| -> Result<String, String> {
        if part.is_empty() {
            return Err(format!(
                "'{text}' is not a user: the {what} is empty ({USER_FORMS})"
            ));
        }
        if part.contains(':') {
            return Err(format!(
                "'{text}' is not a user: more than one ':' ({USER_FORMS})"
            ));
        }
        if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "'{text}' is not a user: the {what} '{part}' holds a blank or control character"
            ));
        }
        if is_number(part) && parse_id(part).is_none() {
            return Err(format!(
                "'{text}' is not a user: {what} id {part} is out of range (0 to 4294967294)"
            ));
        }
        Ok(part.to_string())
    };
    Ok(UserSpec {
        user: check(user, "user")?,
        group: group.map(|g| check(g, "group")).transpose()?,
    })
}

/// Whether `part` is written as a number.
fn is_number(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

/// An id in decimal digits, below `u32::MAX`.
fn parse_id(text: &str) -> Option<u32> {
    match text.parse::<u32>() {
        Ok(id) if id != u32::MAX && is_number(text) => Some(id),
        _ => None,
    }
}

/// One entry of `/etc/passwd` or `/etc/group`: its name and its first two
/// numeric fields after the password (uid and gid; gid and nothing).
struct Entry<'a> {
    name: &'a str,
    id: u32,
    /// The primary gid of a passwd entry; `None` for a group entry.
    gid: Option<u32>,
}

/// The well-formed entries of passwd (`name:pw:uid:gid:...`) or, when
/// `with_gid` is false, group (`name:pw:gid:...`) text, in order. Blank
/// lines, comments, and lines without a name or with an unusable id are
/// skipped.
fn entries(text: &str, with_gid: bool) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(move |line| {
        if line.trim_start().starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let _password = fields.next()?;
        let id = parse_id(fields.next()?)?;
        let gid = if with_gid {
            Some(parse_id(fields.next()?)?)
        } else {
            None
        };
        Some(Entry { name, id, gid })
    })
}

/// Resolves against the contents of /etc/passwd and /etc/group (None when
/// the file does not exist, as in a scratch image). A numeric user needs no
/// passwd entry; its gid is GROUP if given, else its passwd entry's gid if
/// there is one, else the same number as the uid (never silently root's 0).
/// A user or group NAME must be found (error names the file, e.g.
/// "no user 'www' in /etc/passwd" / "no /etc/passwd to look up user 'www'").
/// Parse the files leniently (skip malformed lines, comments).
///
/// The first matching entry wins, as with `getpwnam`. A numeric GROUP is
/// used as it is, like a numeric user.
pub fn resolve(spec: &UserSpec, passwd: Option<&str>, group: Option<&str>) -> Result<Ids, String> {
    resolve_ids(spec, passwd, group).map_err(|e| printable(&e))
}

fn resolve_ids(spec: &UserSpec, passwd: Option<&str>, group: Option<&str>) -> Result<Ids, String> {
    let (uid, user_gid) = match parse_id(&spec.user) {
        Some(uid) => {
            let entry = passwd.and_then(|text| entries(text, true).find(|e| e.id == uid));
            (uid, entry.and_then(|e| e.gid).unwrap_or(uid))
        }
        None => {
            let Some(text) = passwd else {
                return Err(format!("no /etc/passwd to look up user '{}'", spec.user));
            };
            match entries(text, true).find(|e| e.name == spec.user) {
                Some(Entry {
                    id, gid: Some(gid), ..
                }) => (id, gid),
                _ => return Err(format!("no user '{}' in /etc/passwd", spec.user)),
            }
        }
    };
    let gid = match &spec.group {
        None => user_gid,
        Some(name) => match parse_id(name) {
            Some(gid) => gid,
            None => {
                let Some(text) = group else {
                    return Err(format!("no /etc/group to look up group '{name}'"));
                };
                match entries(text, false).find(|e| e.name == name) {
                    Some(e) => e.id,
                    None => return Err(format!("no group '{name}' in /etc/group")),
                }
            }
        },
    };
    Ok(Ids { uid, gid })
}

/// `USER` or `USER:GROUP`, as written; [`parse_user`] reads it back.
impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(group) => write!(f, "{}:{group}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
# comment line
root:x:0:0:root:/root:/bin/sh

daemon:x:1:1::/:/usr/sbin/nologin
www:x:33:34:web server:/var/www:/sbin/nologin
broken line without colons
bad-uid:x:abc:1::/:/bin/sh
short:x:7
max:x:4294967295:1::/:
+nis::::::
www:x:99:99:second entry loses:/:
app:x:1000:1000
svc:x:2000:3000::/:
";

    const GROUP: &str = "\
root:x:0:
# staff:x:77:
www-data:x:33:www
broken
nogid:x::
staff:x:50:alice,bob
staff:x:51:
";

    fn user(text: &str) -> UserSpec {
        let spec = parse_user(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(parse_user(&spec.to_string()), Ok(spec.clone()));
        spec
    }

    fn ids(text: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Ids, String> {
        resolve(&user(text), passwd, group)
    }

    fn id(uid: u32, gid: u32) -> Result<Ids, String> {
        Ok(Ids { uid, gid })
    }

    #[test]
    fn parses_user_and_group() {
        let spec = |u: &str, g: Option<&str>| UserSpec {
            user: u.into(),
            group: g.map(str::to_string),
        };
        assert_eq!(user("www"), spec("www", None));
        assert_eq!(user(" www:staff "), spec("www", Some("staff")));
        assert_eq!(user("1000:1000"), spec("1000", Some("1000")));
        assert_eq!(user("0"), spec("0", None));
        assert_eq!(user("4294967294"), spec("4294967294", None));
        assert_eq!(user("ünï:grüp"), spec("ünï", Some("grüp")));
        assert_eq!(user("www:staff").to_string(), "www:staff");
        assert_eq!(user("www").to_string(), "www");
    }

    #[test]
    fn user_syntax_errors() {
        let forms = "(USER, USER:GROUP, UID or UID:GID)";
        let cases = [
            ("", format!("'' is not a user: the user is empty {forms}")),
            (" ", format!("' ' is not a user: the user is empty {forms}")),
            (":staff", format!("':staff' is not a user: the user is empty {forms}")),
            ("www:", format!("'www:' is not a user: the group is empty {forms}")),
            ("a:b:c", format!("'a:b:c' is not a user: more than one ':' {forms}")),
            (
                "a b",
                "'a b' is not a user: the user 'a b' holds a blank or control character".into(),
            ),
            (
                "a:b\tc",
                "'a:b\\tc' is not a user: the group 'b\\tc' holds a blank or control character"
                    .into(),
            ),
            (
                "4294967295",
                "'4294967295' is not a user: user id 4294967295 is out of range (0 to 4294967294)"
                    .into(),
            ),
            (
                "1:99999999999",
                "'1:99999999999' is not a user: group id 99999999999 is out of range (0 to 4294967294)"
                    .into(),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_user(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn numeric_users_need_no_entry() {
        assert_eq!(ids("1000", None, None), id(1000, 1000));
        assert_eq!(ids("4242", Some(PASSWD), None), id(4242, 4242));
        assert_eq!(ids("2000", Some(PASSWD), None), id(2000, 3000)); // its entry's gid
        assert_eq!(ids("33", Some(PASSWD), None), id(33, 34)); // the first entry
        assert_eq!(ids("0", None, None), id(0, 0));
        assert_eq!(ids("1000:5", None, None), id(1000, 5));
        assert_eq!(ids("1000:0", Some(PASSWD), Some(GROUP)), id(1000, 0));
        assert_eq!(ids("1000:staff", None, Some(GROUP)), id(1000, 50));
    }

    #[test]
    fn names_are_looked_up() {
        assert_eq!(ids("www", Some(PASSWD), None), id(33, 34));
        assert_eq!(ids("root", Some(PASSWD), None), id(0, 0));
        assert_eq!(ids("app", Some(PASSWD), None), id(1000, 1000)); // fewer fields is fine
        assert_eq!(ids("www:www-data", Some(PASSWD), Some(GROUP)), id(33, 33));
        assert_eq!(ids("www:staff", Some(PASSWD), Some(GROUP)), id(33, 50));
        assert_eq!(ids("www:7", Some(PASSWD), None), id(33, 7));
    }

    #[test]
    fn missing_files_and_entries() {
        assert_eq!(
            ids("www", None, None),
            Err("no /etc/passwd to look up user 'www'".into())
        );
        assert_eq!(
            ids("nobody", Some(PASSWD), None),
            Err("no user 'nobody' in /etc/passwd".into())
        );
        assert_eq!(
            ids("www:staff", Some(PASSWD), None),
            Err("no /etc/group to look up group 'staff'".into())
        );
        assert_eq!(
            ids("1000:wheel", None, Some(GROUP)),
            Err("no group 'wheel' in /etc/group".into())
        );
        assert_eq!(
            ids("1:x", None, Some("")),
            Err("no group 'x' in /etc/group".into())
        );
        assert_eq!(
            ids("x", Some(""), None),
            Err("no user 'x' in /etc/passwd".into())
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for name in [
            "bad-uid",
            "short",
            "max",
            "broken line without colons",
            "+nis",
            "# comment line",
        ] {
            if parse_user(name).is_ok() {
                assert_eq!(
                    ids(name, Some(PASSWD), None),
                    Err(format!("no user '{name}' in /etc/passwd")),
                    "{name}"
                );
            }
        }
        // A commented-out group does not count; nor does one without a gid.
        assert_eq!(
            ids("1:nogid", None, Some(GROUP)),
            Err("no group 'nogid' in /etc/group".into())
        );
        assert_eq!(
            ids("1:staff", None, Some("# staff:x:77:\nstaff:x:50:\n")),
            id(1, 50)
        );
        assert_eq!(ids("1:root", None, Some("root:x:0:\r\n")), id(1, 0));
        // Leading zeros are the same number (found by fuzzing the property, not the code).
        assert_eq!(
            ids("www:grp", Some("www:x:05:033::/:\n"), Some("grp:x:007:\n")),
            id(5, 7)
        );
        assert_eq!(ids("svc", Some("svc:x:5:6\r\n"), None), id(5, 6)); // CRLF: the gid is the 4th field
    }
}
