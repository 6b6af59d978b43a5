//! The resolved unit list: the table, the per-daemon options, the
//! selection and the main program turned into one list of units that the
//! runtime and the supervisor take as given, and that `--check` prints. No
//! I/O here: the password and group files come in as text.
//!
//! Every option item must name a daemon of the table (else it is a
//! configuration error naming the flag or variable and the item); an item
//! naming a daemon the selection left out is dropped with one warning per
//! option. Contradictions — a dependency cycle, `always` or a readiness
//! check for a one-shot, another user asked of a sidecar-init that is not
//! root — are configuration errors too.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use crate::check::Check;
use crate::config::{DaemonOptions, Names, PerDaemon};
use crate::exit;
use crate::procfile::{self, DaemonSpec};
use crate::supervisor::{Kind, Liveness, Policy, Readiness, UnitSpec};
use crate::users::{self, Ids};

/// The name the main program goes by (`status`, `stop main`).
pub const MAIN: &str = "main";

/// One unit to run, with everything about it resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// What the supervisor needs: name, kind, policy, readiness, order.
    pub spec: UnitSpec,
    /// The command; `argv[0]` without `/` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Its readiness check, if any.
    pub ready: Option<Check>,
    /// Its liveness check, if any.
    pub live: Option<Check>,
    /// The user and group it runs as, when that is not sidecar-init's own.
    pub user: Option<Ids>,
}

/// The units, in start order, and what resolving them had to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub units: Vec<Unit>,
    /// One line each: option items naming daemons the selection left out,
    /// unknown names in the selection.
    pub warnings: Vec<String>,
}

/// Everything the plan is made of.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The daemon table, in start order.
    pub table: Vec<DaemonSpec>,
    pub options: DaemonOptions,
    /// The selection's source (flag or variable) and its text, if one is set.
    pub selection: Option<(String, String)>,
    /// The main program, if any.
    pub main: Option<Vec<String>>,
    /// sidecar-init's own effective uid and gid.
    pub euid: u32,
    pub egid: u32,
    /// /etc/passwd and /etc/group, where they exist.
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// Resolves the inputs into the units to run (see the module docs).
pub fn resolve(inputs: Inputs) -> Result<Plan, String> {
    let Inputs {
        table,
        options,
        selection,
        main,
        ..
    } = &inputs;
    if main.is_some() && table.iter().any(|d| d.name == MAIN) {
        return Err(format!(
            "the daemon '{MAIN}' has the main program's name: rename it in the Procfile"
        ));
    }
    let mut warnings = Vec::new();
    let in_table: HashSet<&str> = table.iter().map(|d| d.name.as_str()).collect();
    let (selected_specs, unknown) = match selection {
        Some((_, text)) => procfile::select(table.clone(), Some(text)),
        None => (table.clone(), Vec::new()),
    };
    if !unknown.is_empty() {
        let source = selection.as_ref().map_or("", |(s, _)| s.as_str());
        warnings.push(format!(
            "{source} names unknown daemons, ignored: {}",
            unknown.join(", ")
        ));
    }
    let selected: HashSet<&str> = selected_specs.iter().map(|d| d.name.as_str()).collect();
    let selection_source = selection.as_ref().map_or("", |(s, _)| s.as_str());
    let scope = Scope {
        in_table: &in_table,
        selected: &selected,
        selection: selection_source,
        main: main.is_some(),
    };

    // Every option's names: known, and selected (or dropped with a warning).
    let restart = scope.per_daemon(&options.restart, false, &mut warnings)?;
    let ready = scope.per_daemon(&options.ready, false, &mut warnings)?;
    let live = scope.per_daemon(&options.live, false, &mut warnings)?;
    let stop_signal = scope.per_daemon(&options.stop_signal, true, &mut warnings)?;
    let user = scope.per_daemon(&options.user, true, &mut warnings)?;
    let oneshot = scope.names(&options.oneshot, &mut warnings)?;
    let essential = scope.names(&options.essential, &mut warnings)?;
    let after = scope.after(&options.after, &mut warnings)?;

    let index: HashMap<&str, usize> = selected_specs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    let mut units = Vec::with_capacity(selected_specs.len() + 1);
    for d in &selected_specs {
        let name = d.name.as_str();
        let is_oneshot = oneshot.contains(&name);
        let policy = restart
            .as_ref()
            .and_then(|r| r.get(name).copied())
            .unwrap_or_default();
        let ready = ready.as_ref().and_then(|r| r.get(name).cloned());
        let live = live.as_ref().and_then(|l| l.get(name).cloned());
        if is_oneshot {
            let source = options.oneshot.as_ref().map_or("", |o| o.source.as_str());
            if policy == Policy::Always {
                let from = options.restart.as_ref().map_or("", |r| r.source.as_str());
                return Err(format!(
                    "{from}: 'always' for the one-shot '{name}' ({source}): a one-shot runs to completion \
                     (give it on-failure or never, e.g. {name}=on-failure)"
                ));
            }
            if ready.is_some() {
                let from = options.ready.as_ref().map_or("", |r| r.source.as_str());
                return Err(format!(
                    "{from}: '{name}' is a one-shot ({source}): it is ready when it exits 0"
                ));
            }
            if live.is_some() {
                let from = options.live.as_ref().map_or("", |r| r.source.as_str());
                return Err(format!(
                    "{from}: '{name}' is a one-shot ({source}): it has no liveness to check"
                ));
            }
        }
        let deps: Vec<usize> = after
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, dep)| index.get(dep.as_str()).copied())
            .fold(Vec::new(), |mut v, i| {
                if !v.contains(&i) {
                    v.push(i);
                }
                v
            });
        let spec = UnitSpec {
            name: name.to_string(),
            kind: if is_oneshot {
                Kind::Oneshot
            } else {
                Kind::Daemon
            },
            policy,
            ready: readiness(ready.as_ref()),
            ready_text: ready.as_ref().map(|c| c.to_string()),
            live: live.as_ref().map(|c| Liveness {
                exec: matches!(c, Check::Exec(_)),
                text: c.to_string(),
            }),
            after: deps,
            essential: essential.contains(&name),
            stop_signal: stop_signal
                .as_ref()
                .and_then(|s| s.get(name).copied())
                .unwrap_or(nix::libc::SIGTERM),
        };
        let user = resolve_user(&inputs, user.as_ref(), name)?;
        units.push(Unit {
            spec,
            argv: d.argv.clone(),
            ready,
            live,
            user,
        });
    }
    if let Some(cycle) = find_cycle(&units) {
        let source = options.after.as_ref().map_or("", |a| a.source.as_str());
        return Err(format!("{source}: a dependency cycle: {cycle}"));
    }
    if let Some(argv) = main {
        let mut spec = UnitSpec::daemon(MAIN);
        spec.kind = Kind::Main;
        spec.after = (0..units.len()).collect();
        spec.stop_signal = stop_signal
            .as_ref()
            .and_then(|s| s.get(MAIN).copied())
            .unwrap_or(nix::libc::SIGTERM);
        let user = resolve_user(&inputs, user.as_ref(), MAIN)?;
        units.push(Unit {
            spec,
            argv: argv.clone(),
            ready: None,
            live: None,
            user,
        });
    }
    Ok(Plan { units, warnings })
}

/// How the supervisor learns a check passed.
fn readiness(check: Option<&Check>) -> Readiness {
    match check {
        None => Readiness::Spawned,
        Some(Check::Line(text)) => Readiness::Line(text.clone()),
        Some(Check::Notify) => Readiness::Notify,
        Some(Check::Exec(_)) => Readiness::Poll { exec: true },
        Some(_) => Readiness::Poll { exec: false },
    }
}

/// The ids daemon `name` runs as, when they are not sidecar-init's own.
fn resolve_user(
    inputs: &Inputs,
    user: Option<&PerDaemon<users::UserSpec>>,
    name: &str,
) -> Result<Option<Ids>, String> {
    let Some(option) = user else { return Ok(None) };
    let Some(spec) = option.get(name) else {
        return Ok(None);
    };
    let source = &option.source;
    let ids = users::resolve(spec, inputs.passwd.as_deref(), inputs.group.as_deref())
        .map_err(|e| format!("{source}: {name}={spec}: {e}"))?;
    if ids.uid == inputs.euid && ids.gid == inputs.egid {
        return Ok(None);
    }
    if inputs.euid != 0 {
        return Err(format!(
            "{source}: {name}={spec}: sidecar-init runs as uid {}, not root, so it cannot run \
             a daemon as {}:{}",
            inputs.euid, ids.uid, ids.gid
        ));
    }
    Ok(Some(ids))
}

/// What the option names are checked against.
struct Scope<'a> {
    in_table: &'a HashSet<&'a str>,
    selected: &'a HashSet<&'a str>,
    /// The selection's source, for the warning.
    selection: &'a str,
    main: bool,
}

impl Scope<'_> {
    /// Whether `name` is a daemon the option may name (the main program
    /// only where `main_ok`); errors for names the table lacks.
    fn known(
        &self,
        source: &str,
        item: Option<&str>,
        name: &str,
        main_ok: bool,
    ) -> Result<(), String> {
        if self.in_table.contains(name) || (main_ok && self.main && name == MAIN) {
            return Ok(());
        }
        let hint = if name == MAIN && self.main {
            " (the main program takes only --stop-signal and --user)"
        } else {
            ""
        };
        let item = item.map(|i| format!("{i}: ")).unwrap_or_default();
        Err(format!(
            "{source}: {item}no daemon named '{name}' in the table{hint}"
        ))
    }

    fn selected(&self, name: &str) -> bool {
        self.selected.contains(name) || name == MAIN
    }

    fn drop_warning(&self, source: &str, dropped: &[String]) -> Option<String> {
        (!dropped.is_empty()).then(|| {
            format!(
                "{source}: ignored for daemons not selected ({}): {}",
                self.selection,
                dropped.join(", ")
            )
        })
    }

    /// A per-daemon option with its unselected items dropped.
    fn per_daemon<T: Clone>(
        &self,
        option: &Option<PerDaemon<T>>,
        main_ok: bool,
        warnings: &mut Vec<String>,
    ) -> Result<Option<PerDaemon<T>>, String> {
        let Some(o) = option else { return Ok(None) };
        let mut kept = PerDaemon {
            source: o.source.clone(),
            default: o.default.clone(),
            items: Vec::new(),
        };
        let mut dropped = Vec::new();
        for (name, value) in &o.items {
            self.known(&o.source, None, name, main_ok)?;
            if self.selected(name) {
                kept.items.push((name.clone(), value.clone()));
            } else if !dropped.contains(name) {
                dropped.push(name.clone());
            }
        }
        warnings.extend(self.drop_warning(&o.source, &dropped));
        Ok(Some(kept))
    }

    /// A list option's selected names.
    fn names<'n>(
        &self,
        option: &'n Option<Names>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<&'n str>, String> {
        let Some(o) = option else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for name in &o.names {
            self.known(&o.source, None, name, false)?;
            if self.selected(name) {
                kept.push(name.as_str());
            } else {
                dropped.push(name.clone());
            }
        }
        warnings.extend(self.drop_warning(&o.source, &dropped));
        Ok(kept)
    }

    /// `--after`'s `(name, dependency)` pairs between selected daemons.
    fn after(
        &self,
        option: &Option<PerDaemon<String>>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<(String, String)>, String> {
        let Some(o) = option else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for (name, dep) in &o.items {
            let item = format!("{name}={dep}");
            self.known(&o.source, Some(&item), name, false)?;
            self.known(&o.source, Some(&item), dep, false)?;
            if self.selected(name) && self.selected(dep) {
                kept.push((name.clone(), dep.clone()));
            } else {
                dropped.push(item);
            }
        }
        warnings.extend(self.drop_warning(&o.source, &dropped));
        Ok(kept)
    }
}

/// A dependency cycle among the units, as `a → b → a`, if there is one.
fn find_cycle(units: &[Unit]) -> Option<String> {
    // Iterative depth-first search: 0 unvisited, 1 on the path, 2 done.
    let mut mark = vec![0u8; units.len()];
    for root in 0..units.len() {
        if mark[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = units[node].spec.after.get(*next) {
                *next += 1;
                match mark[dep] {
                    0 => {
                        mark[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut names: Vec<&str> = stack[from..]
                            .iter()
                            .map(|&(n, _)| units[n].spec.name.as_str())
                            .collect();
                        names.push(&units[dep].spec.name);
                        return Some(names.join(" → "));
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// The plan as `--check` prints it: a Procfile (which `procfile::parse`
/// reads back), each entry followed by a comment with its settings.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for u in &plan.units {
        let entry = DaemonSpec {
            name: u.spec.name.clone(),
            argv: u.argv.clone(),
        };
        if u.spec.kind == Kind::Main {
            out.push_str("# the main program (-- CMD), after every daemon is ready:\n# ");
        }
        out.push_str(&procfile::render(std::slice::from_ref(&entry)));
        let _ = write!(out, "#   {}", settings(plan, u));
        out.push('\n');
    }
    out
}

/// One unit's settings, for `--check`.
fn settings(plan: &Plan, u: &Unit) -> String {
    let s = &u.spec;
    let mut parts = vec![s.kind.as_str().to_string()];
    if s.kind != Kind::Main {
        parts.push(format!("restart {}", s.policy.as_str()));
    }
    if let Some(text) = &s.ready_text {
        parts.push(format!("ready {text}"));
    }
    if !s.after.is_empty() && s.kind != Kind::Main {
        let deps: Vec<&str> = s
            .after
            .iter()
            .map(|&i| plan.units[i].spec.name.as_str())
            .collect();
        parts.push(format!("after {}", deps.join(" ")));
    }
    if let Some(live) = &s.live {
        parts.push(format!("live {}", live.text));
    }
    if s.essential {
        parts.push("essential".into());
    }
    parts.push(format!("stop-signal {}", exit::signal_name(s.stop_signal)));
    if let Some(ids) = u.user {
        parts.push(format!("user {}:{}", ids.uid, ids.gid));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Request};
    use std::ffi::OsString;

    fn table(names: &[&str]) -> Vec<DaemonSpec> {
        names
            .iter()
            .map(|n| DaemonSpec::new(n, &["/bin/true"]))
            .collect()
    }

    /// The plan for `names` with these flags (and the selection `sel`).
    fn plan_with(names: &[&str], args: &[&str], sel: Option<&str>) -> Result<Plan, String> {
        let config = match config::parse(args.iter().map(OsString::from), |_| None) {
            Ok(Request::Run(c)) => c,
            other => panic!("{args:?}: {other:?}"),
        };
        resolve(Inputs {
            table: table(names),
            options: config.options,
            selection: sel.map(|s| ("--daemons".to_string(), s.to_string())),
            main: config.main,
            euid: 0,
            egid: 0,
            passwd: Some("root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n".into()),
            group: Some("root:x:0:\nwww:x:33:\nstaff:x:50:\n".into()),
        })
    }

    fn plan(names: &[&str], args: &[&str]) -> Plan {
        plan_with(names, args, None).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn err(names: &[&str], args: &[&str]) -> String {
        plan_with(names, args, None).expect_err(&format!("{args:?} should fail"))
    }

    fn unit<'p>(p: &'p Plan, name: &str) -> &'p Unit {
        p.units.iter().find(|u| u.spec.name == name).unwrap()
    }

    #[test]
    fn the_table_alone_gives_plain_daemons_in_order() {
        let p = plan(&["a", "b"], &[]);
        assert_eq!(p.units.len(), 2);
        assert_eq!(p.units[0].spec, UnitSpec::daemon("a"));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn options_land_on_their_daemons() {
        let p = plan(
            &["db", "web", "migrate"],
            &[
                "--restart",
                "on-failure,web=always",
                "--ready",
                "db=tcp:5432,web=line:listening",
                "--after",
                "web=db,web=migrate,migrate=db",
                "--oneshot",
                "migrate",
                "--essential",
                "db",
                "--stop-signal",
                "web=QUIT",
                "--user",
                "web=www:staff",
                "--live",
                "web=http:80/health",
            ],
        );
        let web = unit(&p, "web");
        assert_eq!(web.spec.policy, Policy::Always);
        assert_eq!(web.spec.ready, Readiness::Line("listening".into()));
        assert_eq!(web.spec.after, [0, 2]);
        assert_eq!(web.spec.stop_signal, nix::libc::SIGQUIT);
        assert_eq!(web.user, Some(Ids { uid: 33, gid: 50 }));
        assert_eq!(
            web.spec.live.as_ref().unwrap().text,
            "http://127.0.0.1:80/health"
        );
        let db = unit(&p, "db");
        assert_eq!(db.spec.ready, Readiness::Poll { exec: false });
        assert_eq!(db.spec.ready_text.as_deref(), Some("tcp:127.0.0.1:5432"));
        assert!(db.spec.essential);
        assert_eq!(db.spec.policy, Policy::OnFailure);
        let migrate = unit(&p, "migrate");
        assert_eq!(migrate.spec.kind, Kind::Oneshot);
        assert_eq!(migrate.spec.after, [0]);
    }

    #[test]
    fn names_the_table_lacks_are_errors_naming_flag_and_item() {
        assert_eq!(
            err(&["a"], &["--ready", "ghost=tcp:1"]),
            "--ready: no daemon named 'ghost' in the table"
        );
        assert_eq!(
            err(&["a"], &["--after", "a=ghost"]),
            "--after: a=ghost: no daemon named 'ghost' in the table"
        );
        assert!(
            err(&["a"], &["--oneshot", "a,ghost"])
                .starts_with("--oneshot: no daemon named 'ghost'")
        );
        assert!(err(&["a"], &["--restart", "ghost=always"]).contains("'ghost'"));
    }

    #[test]
    fn the_selection_drops_items_with_one_warning_per_option() {
        let p = plan_with(
            &["a", "b", "c"],
            &[
                "--after",
                "a=b,c=a,c=b",
                "--ready",
                "b=tcp:1,c=tcp:2",
                "--oneshot",
                "b",
            ],
            Some("a,c"),
        )
        .unwrap();
        assert_eq!(p.units.len(), 2);
        assert_eq!(unit(&p, "c").spec.after, [0], "c=b dropped, c=a kept");
        assert!(unit(&p, "a").spec.after.is_empty(), "a=b dropped");
        assert_eq!(
            p.warnings,
            [
                "--ready: ignored for daemons not selected (--daemons): b",
                "--oneshot: ignored for daemons not selected (--daemons): b",
                "--after: ignored for daemons not selected (--daemons): a=b, c=b",
            ]
        );
    }

    #[test]
    fn cycles_are_errors_naming_them() {
        assert_eq!(
            err(&["a", "b", "c"], &["--after", "a=b,b=c,c=a"]),
            "--after: a dependency cycle: a → b → c → a"
        );
        assert_eq!(
            err(&["a"], &["--after", "a=a"]),
            "--after: a dependency cycle: a → a"
        );
        // A diamond is no cycle.
        plan(&["a", "b", "c", "d"], &["--after", "b=a,c=a,d=b,d=c"]);
    }

    #[test]
    fn one_shot_contradictions() {
        assert!(
            err(&["m"], &["--oneshot", "m", "--restart", "always"])
                .contains("'always' for the one-shot 'm'")
        );
        assert!(err(&["m"], &["--oneshot", "m", "--ready", "m=tcp:1"]).contains("is a one-shot"));
        assert!(err(&["m"], &["--oneshot", "m", "--live", "m=tcp:1"]).contains("is a one-shot"));
        plan(
            &["m", "d"],
            &["--oneshot", "m", "--restart", "always,m=on-failure"],
        );
    }

    #[test]
    fn the_main_program_depends_on_every_daemon() {
        let p = plan(
            &["a", "b"],
            &["--stop-signal", "main=INT", "--", "app", "--flag"],
        );
        let main = p.units.last().unwrap();
        assert_eq!(main.spec.name, MAIN);
        assert_eq!(main.spec.kind, Kind::Main);
        assert_eq!(main.spec.after, [0, 1]);
        assert_eq!(main.spec.stop_signal, nix::libc::SIGINT);
        assert_eq!(main.argv, ["app", "--flag"]);
        assert!(err(&["a"], &["--ready", "main=tcp:1", "--", "app"]).contains("takes only"));
        assert!(err(&["main"], &["--", "app"]).contains("has the main program's name"));
    }

    #[test]
    fn another_user_needs_root() {
        let config = match config::parse(["--user", "a=65534"].iter().map(OsString::from), |_| None)
        {
            Ok(Request::Run(c)) => c,
            other => panic!("{other:?}"),
        };
        let inputs = |euid| Inputs {
            table: table(&["a"]),
            options: config.options.clone(),
            euid,
            egid: euid,
            ..Inputs::default()
        };
        assert_eq!(
            resolve(inputs(0)).unwrap().units[0].user,
            Some(Ids {
                uid: 65534,
                gid: 65534
            })
        );
        assert!(resolve(inputs(1000)).unwrap_err().contains("not root"));
        // Its own uid is no switch at all.
        assert_eq!(resolve(inputs(65534)).unwrap().units[0].user, None);
    }

    #[test]
    fn render_is_a_procfile_with_the_settings() {
        let p = plan(
            &["db", "web"],
            &["--ready", "db=tcp:5432", "--after", "web=db", "--", "app"],
        );
        let text = render(&p);
        assert_eq!(
            text,
            "db: /bin/true\n\
             #   daemon; restart never; ready tcp:127.0.0.1:5432; stop-signal SIGTERM\n\
             web: /bin/true\n\
             #   daemon; restart never; after db; stop-signal SIGTERM\n\
             # the main program (-- CMD), after every daemon is ready:\n\
             # main: app\n\
             #   main; stop-signal SIGTERM\n"
        );
        let back = procfile::parse(text.as_bytes()).unwrap();
        assert_eq!(back.len(), 2, "the main program is a comment");
    }
}
