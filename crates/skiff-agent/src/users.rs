//! Guest users for `ExecRequest::user`: read from /etc/passwd (the agent is
//! static, so there is no NSS), or given as numbers.

/// Who a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// `spec` is a user name from `passwd` (its text), `UID`, or `UID:GID`.
pub fn lookup(spec: &str, passwd: &str) -> Option<User> {
    let from_passwd = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != spec {
            return None;
        }
        Some(User {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_owned(),
        })
    });
    if from_passwd.is_some() {
        return from_passwd;
    }
    let (uid, gid) = match spec.split_once(':') {
        Some((u, g)) => (u.parse().ok()?, g.parse().ok()?),
        None => {
            let uid: u32 = spec.parse().ok()?;
            // A UID in the passwd file brings its group and home.
            if let Some(u) = passwd.lines().find_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                (f.len() >= 7 && f[2] == spec).then(|| User {
                    name: f[0].to_owned(),
                    uid,
                    gid: f[3].parse().unwrap_or(uid),
                    home: f[5].to_owned(),
                })
            }) {
                return Some(u);
            }
            (uid, uid)
        }
    };
    Some(User {
        name: spec.to_owned(),
        uid,
        gid,
        home: "/".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nsbx:x:1000:1001:Sandbox:/home/sbx:/bin/sh\nbroken:x:notanumber\n";

    #[test]
    fn names_and_numbers_resolve_and_unknown_names_do_not() {
        let sbx = lookup("sbx", PASSWD).expect("sbx");
        assert_eq!(
            (sbx.uid, sbx.gid, sbx.home.as_str()),
            (1000, 1001, "/home/sbx")
        );
        assert_eq!(lookup("1000", PASSWD).expect("by uid").name, "sbx");
        let n = lookup("4242", PASSWD).expect("numeric");
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 4242, "/"));
        let pair = lookup("5:6", PASSWD).expect("pair");
        assert_eq!((pair.uid, pair.gid), (5, 6));
        assert_eq!(lookup("nobody-here", PASSWD), None);
        assert_eq!(lookup("broken", PASSWD), None);
        assert_eq!(lookup("1:x", PASSWD), None);
        assert_eq!(lookup("", ""), None);
    }
}
