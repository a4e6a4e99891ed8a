//! The console's HTML: one `maud` template per page, a shared layout with landmarks and the
//! navigation, and small formatting helpers. Templates only render what handlers hand them;
//! they read nothing and decide nothing.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::Signed;
use super::auth::CSRF_FIELD;
use crate::runtime::{HealthState, Plugin};
use crate::store::{
    AuditRow, Installation, InstallationStatus, Message, Pairing, QueuedMessage, RunState,
    RunStatus, Session,
};

/// The navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/console/installations", "Installations"),
    ("/console/pairings", "Pairings"),
    ("/console/plugins", "Plugins"),
    ("/console/sessions", "Sessions"),
    ("/console/runs", "Runs and queues"),
    ("/console/audit", "Drop audit"),
    ("/console/metrics", "Metrics"),
];

/// A value safe inside a URL path segment or query value (everything but unreserved
/// characters percent-encoded).
pub(crate) fn path_segment(value: &str) -> String {
    /// RFC 3986's unreserved characters stay as they are.
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, ENCODED).to_string()
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The words of a `?done=` notice (a fixed list: the query never puts text on the page).
fn notice_text(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "added" => "Installation added.",
        "revoked" => "Installation revoked: its events are refused and its connection closes.",
        "restored" => "Installation restored: its events are accepted again.",
        "updated" => "Installation updated.",
        "rotated" => "Secrets rotated: the next request uses the new values.",
        "approved" => "Pairing approved: the sender is bound and told so.",
        "denied" => "Pairing denied.",
        "interrupted" => "Interrupted: the run was stopped and its queue promoted.",
        "promoted" => "Queued message promoted into the conversation.",
        "dequeued" => "Queued message deleted.",
        "deleted" => "Session deleted.",
        _ => return None,
    })
}

fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(signed.csrf); }
}

/// A POST button form carrying the CSRF token (and `back`, where to return).
fn action(
    signed: &Signed,
    to: &str,
    label: &str,
    back: Option<&str>,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(to) data-confirm=[confirm] {
            (csrf(signed))
            @if let Some(back) = back { input type="hidden" name="back" value=(back); }
            button type="submit" { (label) }
        }
    }
}

fn layout(title: &str, signed: Option<&Signed>, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · switchboard console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    p.brand { "switchboard console" }
                    @if let Some(signed) = signed {
                        nav aria-label="Console" {
                            ul {
                                @for (path, label) in NAV {
                                    li {
                                        @if *path == current {
                                            a href=(path) aria-current="page" { (label) }
                                        } @else {
                                            a href=(path) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form.logout method="post" action="/console/logout" {
                            (csrf(signed))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
                footer { "switchboard " (env!("CARGO_PKG_VERSION")) }
            }
        }
    }
}

fn notice(done: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = notice_text(done) {
            p.notice role="status" { (text) }
        }
    }
}

/// An error page (any status), with a way back.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    layout(
        title,
        None,
        "",
        html! {
            p.error role="alert" { (message) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

/// The sign-in form.
pub(crate) fn login(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        "",
        html! {
            @if let Some(error) = error {
                p.error role="alert" id="login-error" { (error) }
            }
            form.stack method="post" action="/console/login" {
                label for="token" { "Admin token" }
                input id="token" name="token" type="password" autocomplete="current-password"
                    required autofocus aria-describedby=[error.map(|_| "login-error")];
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// Installations, each with its revoke button, and the way to add one.
pub(crate) fn installations(signed: &Signed, all: &[Installation], done: Option<&str>) -> Markup {
    layout(
        "Installations",
        Some(signed),
        "/console/installations",
        html! {
            (notice(done))
            p { a.button href="/console/installations/new" { "Add an installation" } }
            @if all.is_empty() {
                p { "No installations yet." }
            } @else {
                div.scroll {
                    table {
                        caption { (all.len()) " installations" }
                        thead { tr {
                            th scope="col" { "Id" } th scope="col" { "Name" }
                            th scope="col" { "Channel" } th scope="col" { "Routing key" }
                            th scope="col" { "Agent" } th scope="col" { "Status" }
                            th scope="col" { "Secrets" } th scope="col" { "Actions" }
                        } }
                        tbody {
                            @for i in all {
                                tr data-installation=(i.id) {
                                    td { code { (i.id) } }
                                    td { (i.name) }
                                    td { (i.channel) }
                                    td { code { (i.routing_key) } }
                                    td { (i.agent) }
                                    td.status { (i.status.as_str()) }
                                    td { (i.secrets.keys().cloned().collect::<Vec<_>>().join(", ")) }
                                    td.actions {
                                        a href={ "/console/sessions?installation=" (path_segment(&i.id)) } { "Sessions" }
                                        " "
                                        a href={ "/console/installations/" (path_segment(&i.id)) "/edit" } { "Edit" }
                                        " "
                                        a href={ "/console/installations/" (path_segment(&i.id)) "/secrets" } { "Rotate secrets" }
                                        " "
                                        @if i.status == InstallationStatus::Active {
                                            (action(signed,
                                                &format!("/console/installations/{}/revoke", path_segment(&i.id)),
                                                "Revoke", None,
                                                Some("Revoke this installation? Its events will be refused.")))
                                        } @else {
                                            @let skip = format!("skip-{}", i.id);
                                            form.inline method="post" action={ "/console/installations/" (path_segment(&i.id)) "/restore" } {
                                                (csrf(signed))
                                                input id=(skip) name="skip_on_install" type="checkbox";
                                                label for=(skip) { "skip on-install" }
                                                " "
                                                button type="submit" { "Restore" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Step 1: pick a channel; step 2: the form built from its plugin's installation schema.
pub(crate) fn new_installation(
    signed: &Signed,
    plugins: &[std::sync::Arc<Plugin>],
    chosen: Option<&Plugin>,
    values: &super::FormFields,
    error: Option<&str>,
) -> Markup {
    let value = |name: &str| values.get(name).unwrap_or("").to_string();
    layout(
        "Add an installation",
        Some(signed),
        "/console/installations",
        html! {
            form.stack method="get" action="/console/installations/new" {
                label for="pick-channel" { "Channel" }
                select id="pick-channel" name="channel" {
                    @for p in plugins {
                        @let channel = &p.manifest().channel;
                        option value=(channel) selected[chosen.is_some_and(|c| &c.manifest().channel == channel)] {
                            (channel) " (" (p.manifest().description) ")"
                        }
                    }
                }
                button type="submit" { "Show its settings" }
            }
            @if let Some(plugin) = chosen {
                @let manifest = plugin.manifest();
                @let schema = &manifest.installation;
                h2 { "Settings of a " (manifest.channel) " installation" }
                @if let Some(error) = error {
                    p.error role="alert" id="form-error" { (error) }
                }
                form.stack method="post" action="/console/installations" id="installation-form" {
                    (csrf(signed))
                    input type="hidden" name="channel" value=(manifest.channel);
                    fieldset {
                        legend { "Installation" }
                        label for="f-name" { "Name (optional)" }
                        input id="f-name" name="name" type="text" value=(value("name"));
                        label for="f-routing_key" { "Routing key (optional: "
                            @if let Some(key) = &schema.routing_key { "defaults to config " code { (key) } } @else { "defaults to the id" }
                            ")" }
                        input id="f-routing_key" name="routing_key" type="text" value=(value("routing_key"));
                        label for="f-agent" { "Agent" }
                        input id="f-agent" name="agent" type="text" placeholder="echo" value=(value("agent"));
                        label for="f-access_policy" { "Access policy" }
                        select id="f-access_policy" name="access_policy" {
                            option value="open" selected[value("access_policy") != "bound"] { "open: anyone in the chat" }
                            option value="bound" selected[value("access_policy") == "bound"] { "bound: bound users only" }
                        }
                        label for="f-debounce_ms" { "Debounce window (ms, optional)" }
                        input id="f-debounce_ms" name="debounce_ms" type="number" min="1" max="3600000" inputmode="numeric" value=(value("debounce_ms"));
                    }
                    @if !schema.config.is_empty() {
                        fieldset {
                            legend { "Config" }
                            @for (key, spec) in &schema.config {
                                @let id = format!("config-{key}");
                                @let name = format!("config.{key}");
                                @let help = format!("{id}-help");
                                label for=(id) { (key) @if spec.required { " (required)" } @else { " (optional)" } }
                                input id=(id) name=(name) type="text" value=(value(&name))
                                    aria-required=[spec.required.then_some("true")] aria-describedby=(help);
                                small id=(help) { (spec.description) }
                            }
                        }
                    }
                    @if !schema.secrets.is_empty() {
                        fieldset {
                            legend { "Secrets (stored encrypted, never shown again)" }
                            @for (key, spec) in &schema.secrets {
                                @let id = format!("secret-{key}");
                                @let help = format!("{id}-help");
                                label for=(id) { (key) @if spec.required { " (required)" } @else { " (optional)" } }
                                // Secrets are never echoed back into a re-shown form.
                                input id=(id) name={ "secret." (key) } type="password" autocomplete="off"
                                    aria-required=[spec.required.then_some("true")] aria-describedby=(help);
                                small id=(help) { (spec.description) }
                            }
                        }
                    }
                    div.check {
                        input id="f-skip" name="skip_on_install" type="checkbox" checked[values.get("skip_on_install") == Some("on")];
                        label for="f-skip" { "Skip the plugin's on-install step (fill every required value yourself)" }
                    }
                    button type="submit" { "Add installation" }
                }
            }
        },
    )
}

/// Change an installation: name, agent, policy, debounce and its config keys (from the
/// schema, shown with their current values; an emptied field removes the value).
pub(crate) fn edit_installation(
    signed: &Signed,
    installation: &Installation,
    plugin: &Plugin,
    values: Option<&super::FormFields>,
    error: Option<&str>,
) -> Markup {
    let id = path_segment(&installation.id);
    let schema = &plugin.manifest().installation;
    // Re-shown after an error: what was typed; else the stored values.
    let value = |name: &str, stored: String| -> String {
        values
            .and_then(|v| v.get(name))
            .map(str::to_string)
            .unwrap_or(stored)
    };
    let policy = value(
        "access_policy",
        installation.access_policy.as_str().to_string(),
    );
    layout(
        &format!("Edit installation {}", installation.id),
        Some(signed),
        "/console/installations",
        html! {
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form.stack method="post" action={ "/console/installations/" (id) "/edit" } {
                (csrf(signed))
                fieldset {
                    legend { "Installation (" (installation.channel) ")" }
                    label for="f-name" { "Name" }
                    input id="f-name" name="name" type="text" value=(value("name", installation.name.clone()));
                    label for="f-agent" { "Agent" }
                    input id="f-agent" name="agent" type="text" value=(value("agent", installation.agent.clone()));
                    label for="f-access_policy" { "Access policy" }
                    select id="f-access_policy" name="access_policy" {
                        option value="open" selected[policy != "bound"] { "open: anyone in the chat" }
                        option value="bound" selected[policy == "bound"] { "bound: bound or paired users only" }
                    }
                    label for="f-debounce_ms" { "Debounce window (ms)" }
                    input id="f-debounce_ms" name="debounce_ms" type="number" min="1" max="3600000" inputmode="numeric"
                        value=(value("debounce_ms", installation.debounce_ms.to_string()));
                }
                @if !schema.config.is_empty() {
                    fieldset {
                        legend { "Config (an emptied optional field removes its value)" }
                        @for (key, spec) in &schema.config {
                            @let field = format!("config-{key}");
                            @let name = format!("config.{key}");
                            @let help = format!("{field}-help");
                            label for=(field) { (key) @if spec.required { " (required)" } @else { " (optional)" } }
                            input id=(field) name=(name) type="text"
                                value=(value(&name, installation.config.get(key).cloned().unwrap_or_default()))
                                aria-required=[spec.required.then_some("true")] aria-describedby=(help);
                            small id=(help) { (spec.description) }
                        }
                    }
                }
                button type="submit" { "Save changes" }
            }
        },
    )
}

/// New values for an installation's secrets (never shown; empty fields keep their value).
pub(crate) fn rotate_secrets(
    signed: &Signed,
    installation: &Installation,
    plugin: &Plugin,
    error: Option<&str>,
) -> Markup {
    let id = path_segment(&installation.id);
    let schema = &plugin.manifest().installation;
    layout(
        &format!("Rotate secrets of {}", installation.id),
        Some(signed),
        "/console/installations",
        html! {
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            p { "Type a new value for each secret to replace; empty fields keep their current value. Values are stored encrypted and never shown." }
            form.stack method="post" action={ "/console/installations/" (id) "/secrets" } {
                (csrf(signed))
                fieldset {
                    legend { "Secrets (" (installation.channel) ")" }
                    @for (key, spec) in &schema.secrets {
                        @let field = format!("secret-{key}");
                        @let help = format!("{field}-help");
                        label for=(field) {
                            (key)
                            @if installation.secrets.contains_key(key) { " (set)" } @else { " (not set)" }
                        }
                        input id=(field) name={ "secret." (key) } type="password" autocomplete="off" aria-describedby=(help);
                        small id=(help) { (spec.description) }
                    }
                }
                button type="submit" { "Rotate" }
            }
        },
    )
}

/// Pending pairing requests, and the form that approves or denies a code.
pub(crate) fn pairings(
    signed: &Signed,
    pending: &[Pairing],
    installation: Option<&str>,
    done: Option<&str>,
    error: Option<&str>,
) -> Markup {
    layout(
        "Pairings",
        Some(signed),
        "/console/pairings",
        html! {
            (notice(done))
            @if let Some(error) = error {
                p.error role="alert" id="pairing-error" { (error) }
            }
            p { "A sender without access under the bound policy is given a code. Ask them for it, then approve or deny it here; codes are never listed." }
            form.stack method="post" action="/console/pairings" {
                (csrf(signed))
                label for="p-code" { "Pairing code" }
                input id="p-code" name="code" type="text" autocomplete="off" autocapitalize="characters"
                    required aria-describedby=[error.map(|_| "pairing-error")];
                label for="p-user_ref" { "Bind to user (optional; default: the sender's channel user id)" }
                input id="p-user_ref" name="user_ref" type="text";
                div.actions {
                    button type="submit" name="decision" value="approve" { "Approve" }
                    button type="submit" name="decision" value="deny" { "Deny" }
                }
            }
            form.inline-form method="get" action="/console/pairings" role="search" {
                label for="filter-installation" { "Installation id" }
                input id="filter-installation" name="installation" type="text" value=(installation.unwrap_or(""));
                button type="submit" { "Filter" }
            }
            @if pending.is_empty() {
                p { "No pairing is pending." }
            } @else {
                div.scroll {
                    table {
                        caption { (pending.len()) " pending pairings" }
                        thead { tr {
                            th scope="col" { "Sender" } th scope="col" { "Sender id" }
                            th scope="col" { "Installation" } th scope="col" { "Asked" }
                            th scope="col" { "Expires" }
                        } }
                        tbody {
                            @for p in pending {
                                tr {
                                    td { (p.sender_name.as_deref().unwrap_or("")) }
                                    td { code { (p.sender_id) } }
                                    td { code { (p.installation_id) } }
                                    td { (utc(p.created_at_ms)) }
                                    td { (utc(p.expires_at_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Plugins with their health and pool figures.
pub(crate) fn plugins(signed: &Signed, plugins: &[std::sync::Arc<Plugin>]) -> Markup {
    layout(
        "Plugins",
        Some(signed),
        "/console/plugins",
        html! {
            div.scroll {
                table {
                    caption { "Loaded plugins and their health since start-up" }
                    thead { tr {
                        th scope="col" { "Plugin" } th scope="col" { "Version" }
                        th scope="col" { "Channel" } th scope="col" { "Health" }
                        th scope="col" { "Calls" } th scope="col" { "Failures" }
                        th scope="col" { "Failures in a row" } th scope="col" { "Instances created" }
                        th scope="col" { "Idle instances" } th scope="col" { "Last failure" }
                    } }
                    tbody {
                        @for p in plugins {
                            @let stats = p.stats();
                            tr data-plugin=(p.name()) {
                                td { (p.name()) }
                                td { (maud::display(&p.manifest().version)) }
                                td { (p.manifest().channel) }
                                td class=(if stats.state == HealthState::Degraded { "bad" } else { "ok" }) { (maud::display(stats.state)) }
                                td.num { (stats.calls) }
                                td.num { (stats.failures) }
                                td.num { (stats.consecutive_failures) }
                                td.num { (stats.instantiations) }
                                td.num { (p.idle_instances()) }
                                td { (stats.last_failure.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn state_cell(state: RunState) -> Markup {
    html! { span class={ "state state-" (state.as_str()) } { (state.as_str()) } }
}

/// Sessions (of one installation, if filtered).
pub(crate) fn sessions(
    signed: &Signed,
    list: &[RunStatus],
    installation: Option<&str>,
    done: Option<&str>,
) -> Markup {
    layout(
        "Sessions",
        Some(signed),
        "/console/sessions",
        html! {
            (notice(done))
            form.inline-form method="get" action="/console/sessions" role="search" {
                label for="filter-installation" { "Installation id" }
                input id="filter-installation" name="installation" type="text" value=(installation.unwrap_or(""));
                button type="submit" { "Filter" }
            }
            @if list.is_empty() {
                p { "No sessions." }
            } @else {
                div.scroll {
                    table {
                        caption { (list.len()) " sessions, most recently changed first" }
                        thead { tr {
                            th scope="col" { "Session" } th scope="col" { "Installation" }
                            th scope="col" { "Run state" } th scope="col" { "Last change" }
                        } }
                        tbody {
                            @for s in list {
                                tr {
                                    td { a href={ "/console/sessions/" (path_segment(&s.session_id)) } { code { (s.session_id) } } }
                                    td { code { (s.installation_id) } }
                                    td { (state_cell(s.state)) }
                                    td { (utc(s.updated_at_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn message_item(m: &Message) -> Markup {
    html! {
        li data-id=(m.id) class={ "msg role-" (m.role) } {
            span.meta { (m.role) @if m.kind != "message" { " · " (m.kind) } " · " (utc(m.created_at_ms)) }
            span.body { (m.body) }
        }
    }
}

/// One session: run state with its controls, the queue, and the transcript that the page's
/// script keeps live from the session event stream.
pub(crate) fn session(
    signed: &Signed,
    record: &Session,
    status: Option<&RunStatus>,
    messages: &[Message],
    queue: &[QueuedMessage],
    done: Option<&str>,
) -> Markup {
    let id = path_segment(&record.id);
    let state = status.map(|s| s.state).unwrap_or(RunState::Idle);
    let after = messages.last().map(|m| m.id).unwrap_or(0);
    layout(
        &format!("Session {}", record.title_or_key()),
        Some(signed),
        "/console/sessions",
        html! {
            (notice(done))
            dl.facts {
                dt { "Session id" } dd { code { (record.id) } }
                dt { "Installation" } dd { code { (record.installation_id) } }
                dt { "Chat" } dd { code { (record.chat_key) } " (" (record.chat_type) ")" }
                dt { "Run state" } dd id="run-state" aria-live="polite" { (state.as_str()) }
                @if let Some(run) = status.and_then(|s| s.run_id.as_deref()) {
                    dt { "Run" } dd { code { (run) } }
                }
                @if let Some(error) = status.and_then(|s| s.last_error.as_deref()) {
                    dt { "Last error" } dd { (error) }
                }
                dt { "Live updates" } dd id="live-status" aria-live="polite" { "connecting…" }
            }
            div.actions {
                (action(signed, &format!("/console/sessions/{id}/interrupt"), "Interrupt", Some("session"), None))
                (action(signed, &format!("/console/sessions/{id}/delete"), "Delete session", None,
                    Some("Delete this session and its whole history?")))
            }
            h2 id="queue-heading" { "Queue (" span id="queue-count" { (queue.len()) } ")" }
            (queue_list(signed, &record.id, queue, "session"))
            h2 id="transcript-heading" { "Transcript" }
            section id="live" aria-labelledby="transcript-heading"
                data-session=(record.id) data-after=(after) {
                ol id="transcript" aria-live="polite" {
                    @for m in messages { (message_item(m)) }
                }
                p id="streaming" hidden {}
            }
        },
    )
}

fn queue_list(signed: &Signed, session: &str, queue: &[QueuedMessage], back: &str) -> Markup {
    let id = path_segment(session);
    html! {
        @if queue.is_empty() {
            p.muted { "Nothing queued." }
        } @else {
            ul.queue {
                @for q in queue {
                    li {
                        span.body { (q.body) }
                        (action(signed, &format!("/console/sessions/{id}/queue/{}/promote", q.id), "Promote", Some(back), None))
                        (action(signed, &format!("/console/sessions/{id}/queue/{}/delete", q.id), "Delete", Some(back),
                            Some("Delete this queued message?")))
                    }
                }
            }
        }
    }
}

/// Sessions with a run pending, running or failed, or a queue, with their controls.
pub(crate) fn runs(
    signed: &Signed,
    rows: &[(RunStatus, Vec<QueuedMessage>)],
    done: Option<&str>,
) -> Markup {
    layout(
        "Runs and queues",
        Some(signed),
        "/console/runs",
        html! {
            (notice(done))
            @if rows.is_empty() {
                p { "No run is pending or running, and no queue waits." }
            }
            @for (status, queue) in rows {
                @let id = path_segment(&status.session_id);
                section.card aria-label={ "Session " (status.session_id) } data-session=(status.session_id) {
                    h2 { a href={ "/console/sessions/" (id) } { code { (status.session_id) } } }
                    p {
                        "State " (state_cell(status.state))
                        @if let Some(run) = &status.run_id { " · run " code { (run) } }
                        @if let Some(worker) = &status.worker_id { " · worker " (worker) }
                        @if let Some(started) = status.run_started_at_ms { " · started " (utc(started)) }
                        @if let Some(error) = &status.last_error { " · " span.bad { (error) } }
                    }
                    @if matches!(status.state, RunState::Pending | RunState::Running) {
                        (action(signed, &format!("/console/sessions/{id}/interrupt"), "Interrupt", Some("runs"), None))
                    }
                    h3 { "Queue (" (queue.len()) ")" }
                    (queue_list(signed, &status.session_id, queue, "runs"))
                }
            }
        },
    )
}

/// The drop audit: events the host received and deliberately did not store.
pub(crate) fn audit(signed: &Signed, rows: &[AuditRow], installation: Option<&str>) -> Markup {
    layout(
        "Drop audit",
        Some(signed),
        "/console/audit",
        html! {
            form.inline-form method="get" action="/console/audit" role="search" {
                label for="filter-installation" { "Installation id" }
                input id="filter-installation" name="installation" type="text" value=(installation.unwrap_or(""));
                button type="submit" { "Filter" }
            }
            @if rows.is_empty() {
                p { "Nothing dropped." }
            } @else {
                div.scroll {
                    table {
                        caption { "The newest " (rows.len()) " dropped events" }
                        thead { tr {
                            th scope="col" { "When" } th scope="col" { "Installation" }
                            th scope="col" { "Channel" } th scope="col" { "Event type" }
                            th scope="col" { "Event id" } th scope="col" { "Message id" }
                            th scope="col" { "Reason" }
                        } }
                        tbody {
                            @for r in rows {
                                tr {
                                    td { (utc(r.received_at_ms)) }
                                    td { code { (r.installation_id.as_deref().unwrap_or("—")) } }
                                    td { (r.channel) }
                                    td { (r.event_type) }
                                    td { code { (r.event_id.as_deref().unwrap_or("")) } }
                                    td { code { (r.message_id.as_deref().unwrap_or("")) } }
                                    td { (r.drop_reason) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One sample of the metrics text: family, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: String,
    pub value: String,
}

/// The families the overview shows (the `switchboard_` prefix left out).
const KEY_FAMILIES: &[&str] = &[
    "ingest_events_total",
    "webhook_rejections_total",
    "long_connections_open",
    "reconnects_total",
    "runs_total",
    "outbox_deliveries_total",
    "plugin_calls_total",
    "plugin_failures_total",
    "plugin_degraded",
    "plugin_idle_instances",
    "ingest_latency_seconds_count",
    "ingest_latency_seconds_sum",
    "run_duration_seconds_count",
    "run_duration_seconds_sum",
    "delivery_latency_seconds_count",
    "delivery_latency_seconds_sum",
];

/// The samples of the key families in the classic text format, in their order.
pub(crate) fn key_samples(text: &str) -> Vec<Sample> {
    let mut samples: Vec<(usize, Sample)> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let short = name.strip_prefix("switchboard_")?;
            let rank = KEY_FAMILIES.iter().position(|f| *f == short)?;
            Some((
                rank,
                Sample {
                    name: short.to_string(),
                    labels: labels.replace("\",", "\", "),
                    value: value.to_string(),
                },
            ))
        })
        .collect();
    samples.sort_by_key(|(rank, _)| *rank);
    samples.into_iter().map(|(_, sample)| sample).collect()
}

/// A few key counters and histogram totals, as a table.
pub(crate) fn metrics(signed: &Signed, samples: &[Sample]) -> Markup {
    layout(
        "Metrics",
        Some(signed),
        "/console/metrics",
        html! {
            p { "Counts since this host started. The full set is at " code { "/metrics" } "." }
            div.scroll {
                table {
                    caption { "Key metrics" }
                    thead { tr { th scope="col" { "Metric" } th scope="col" { "Labels" } th scope="col" { "Value" } } }
                    tbody {
                        @for s in samples {
                            tr { td { code { (s.name) } } td { code { (s.labels) } } td.num { (s.value) } }
                        }
                    }
                }
            }
        },
    )
}

/// A session's heading: its title, else its chat key.
trait TitleOrKey {
    fn title_or_key(&self) -> &str;
}

impl TitleOrKey for Session {
    fn title_or_key(&self) -> &str {
        if self.title.trim().is_empty() {
            &self.chat_key
        } else {
            &self.title
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_epoch_milliseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_979_199_999), "2025-12-05 23:59:59 UTC");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(path_segment("abc123"), "abc123");
        assert_eq!(path_segment("cf15c7d9-e095_4.0~cb"), "cf15c7d9-e095_4.0~cb");
        assert_eq!(path_segment("../x"), "..%2Fx");
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert_eq!(notice_text(Some("added")), Some("Installation added."));
        assert_eq!(notice_text(Some("<script>")), None);
        assert_eq!(notice_text(None), None);
    }

    #[test]
    fn key_samples_pick_the_listed_families_in_order() {
        let text = "# HELP switchboard_runs runs\n\
                    switchboard_runs_total{outcome=\"ok\",x=\"y\"} 3\n\
                    switchboard_ingest_events_total{channel=\"c\",outcome=\"stored\"} 5\n\
                    switchboard_other_total 9\n\
                    switchboard_run_duration_seconds_bucket{le=\"1\"} 1\n";
        let samples = key_samples(text);
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert_eq!(samples[0].name, "ingest_events_total");
        assert_eq!(samples[0].value, "5");
        assert_eq!(samples[1].name, "runs_total");
        assert_eq!(samples[1].labels, "outcome=\"ok\", x=\"y\"");
    }

    #[test]
    fn markup_escapes_what_it_shows() {
        let page = error_page(StatusCode::NOT_FOUND, "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("name=\"viewport\""), "{page}");
    }
}
