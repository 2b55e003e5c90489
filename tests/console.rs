//! The console in a real headless Chromium against a running tagcast: a person signs in,
//! manages webhooks, sees access records appear for published events and redelivers one; markup
//! in data is shown as text; and, over plain HTTP, what a read token and a forged form get.
//! Its own test binary, which cargo runs apart from the others: browsers are heavy, and the
//! other tests' timings should not share two cores with them.

mod support;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt as _;
use tagcast::store::tokens::Scope;

use support::app::{TestApp, Trigger, event_for};
use support::browser::Browser;
use support::eventually;
use support::receiver::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(20);

/// Runs `journey` with a browser, then closes the browser and tears the app down, whether
/// the journey passed or not.
async fn with_browser(app: TestApp, journey: impl AsyncFnOnce(&TestApp, &Browser)) {
    let browser = Browser::start(&format!("http://{}", app.api_addr)).await;
    let outcome = AssertUnwindSafe(journey(&app, &browser))
        .catch_unwind()
        .await;
    browser.close().await;
    app.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn sign_in(b: &Browser, token: &str) {
    b.goto("/console/").await;
    assert!(
        b.path().await.starts_with("/console/sign-in"),
        "a visitor is sent to sign in"
    );
    b.fill("#token", token).await;
    b.click("form[action='/console/sign-in'] button").await;
    b.find("header .who").await;
}

/// Fills the webhook form of the page shown and sends it.
async fn webhook_form(b: &Browser, name: &str, url: &str, trigger: (&str, &str)) {
    b.fill("#name", name).await;
    if !url.is_empty() {
        b.fill("#url", url).await;
    }
    let (kind, value) = trigger;
    b.click(&format!("input[name=trigger_type][value={kind}]"))
        .await;
    match kind {
        "expression" => b.fill("#expression", value).await,
        "tags" => b.fill("#tags", value).await,
        _ => {}
    }
    b.click("#webhook-form button[type=submit]").await;
}

async fn record_statuses(b: &Browser) -> Vec<String> {
    let mut statuses = Vec::new();
    for row in b
        .client
        .find_all(fantoccini::Locator::Css("#records tbody tr .status"))
        .await
        .unwrap()
    {
        statuses.push(row.text().await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_webhooks_and_reads_and_redelivers_records_in_a_browser() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::always(200).await;
    let token = app.token("alice", Scope::Write).await;
    with_browser(app, async move |app, b| {
        sign_in(b, &token).await;
        assert!(b.text("header .who").await.contains("alice"));
        assert!(
            b.body_text()
                .await
                .contains("No repository has a webhook yet"),
            "the empty state says what to do"
        );
        b.screenshot("repositories-empty").await;

        b.fill("#namespace", "ns").await;
        b.fill("#repository", "shop").await;
        b.click("form[action='/console/open'] button").await;
        assert_eq!(b.path().await, "/console/repositories/ns/shop");
        assert!(
            b.body_text()
                .await
                .contains("This repository has no webhooks")
        );

        // One webhook of each trigger type; a validation failure is shown on its field first.
        b.click("a[href='/console/repositories/ns/shop/new']").await;
        webhook_form(
            b,
            "every-tag",
            &receiver.url("/hook?token=abc"),
            ("all", ""),
        )
        .await;
        let secret = b.text("#new-secret").await;
        assert!(
            secret.starts_with("whsec_"),
            "the generated secret is shown once: {secret}"
        );
        b.screenshot("webhook-created").await;
        let every: i64 = app
            .scalar("SELECT id FROM webhooks WHERE name = 'every-tag'")
            .await;
        let stored: String = app
            .scalar(&format!("SELECT secret FROM webhooks WHERE id = {every}"))
            .await;
        assert_eq!(stored, secret);

        b.goto("/console/repositories/ns/shop/new").await;
        webhook_form(
            b,
            "releases",
            &receiver.url("/releases"),
            ("expression", "release-(v.*"),
        )
        .await;
        let error = b.text("#error-expression").await;
        assert!(
            error.contains("regular expression") || error.contains("regex"),
            "{error}"
        );
        assert_eq!(
            b.find("#expression")
                .await
                .attr("aria-invalid")
                .await
                .unwrap()
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            b.find("#name")
                .await
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("releases"),
            "what was typed is kept"
        );
        b.screenshot("validation-error").await;
        b.fill("#url", "ftp://example.com/x").await;
        b.fill("#expression", "release-v.*").await;
        b.click("#webhook-form button[type=submit]").await;
        assert!(
            b.text("#error-url").await.contains("http"),
            "the URL's rule is shown beside it"
        );
        b.fill("#url", &receiver.url("/releases")).await;
        b.click("#webhook-form button[type=submit]").await;
        b.find("#new-secret").await;

        b.goto("/console/repositories/ns/shop/new").await;
        webhook_form(b, "releases", &receiver.url("/dup"), ("all", "")).await;
        assert!(
            b.text("#error-name").await.contains("named"),
            "a name in use is shown on the name field"
        );
        b.fill("#name", "stable-tags").await;
        b.fill("#url", &receiver.url("/stable")).await;
        b.click("input[name=trigger_type][value=tags]").await;
        b.fill("#tags", "latest, stable").await;
        b.click("#webhook-form button[type=submit]").await;
        b.find("#new-secret").await;

        b.goto("/console/repositories/ns/shop").await;
        assert_eq!(b.count("#webhooks tbody tr").await, 3);
        let shown_url = b.text(&format!("tr[data-webhook='{every}'] td.url")).await;
        assert!(
            shown_url.ends_with("/hook?…"),
            "the query string is hidden: {shown_url}"
        );
        assert!(!b.client.source().await.unwrap().contains("token=abc"));
        let rules = b.text("#webhooks").await;
        assert!(
            rules.contains("all tags")
                && rules.contains("tags matching release-v.*")
                && rules.contains("tags latest, stable"),
            "{rules}"
        );
        b.screenshot("webhooks").await;

        // Events: every build gets a record per webhook, "not triggered" included.
        for tag in ["v1", "release-v2", "latest"] {
            app.publish_event(&event_for("ns", "shop", tag)).await;
        }
        b.goto("/console/repositories/ns/shop/records").await;
        eventually("nine records, none waiting", WAIT, || async {
            b.client.refresh().await.unwrap();
            let statuses = record_statuses(b).await;
            (statuses.len() == 9
                && statuses
                    .iter()
                    .all(|s| s == "succeeded" || s == "not triggered (未触发)"))
            .then_some(())
        })
        .await;
        let statuses = record_statuses(b).await;
        assert_eq!(
            statuses.iter().filter(|s| *s == "succeeded").count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(
            statuses
                .iter()
                .filter(|s| *s == "not triggered (未触发)")
                .count(),
            4,
            "{statuses:?}"
        );
        let first_time = b.find("#records tbody tr time").await;
        assert!(
            first_time
                .attr("title")
                .await
                .unwrap()
                .unwrap()
                .ends_with(" UTC"),
            "the exact time on hover"
        );
        assert!(
            first_time.text().await.unwrap().contains("ago")
                || first_time.text().await.unwrap() == "just now"
        );
        b.screenshot("records").await;

        // Filters: by status and by tag.
        b.find("#status")
            .await
            .select_by_value("not_triggered")
            .await
            .unwrap();
        b.click("#filters button").await;
        assert_eq!(record_statuses(b).await, vec!["not triggered (未触发)"; 4]);
        b.goto("/console/repositories/ns/shop/records").await;
        b.fill("#tag", "latest").await;
        b.click("#filters button").await;
        assert_eq!(b.count("#records tbody tr").await, 3);
        // The browser's time field takes only times; a hand-made link can hold anything.
        b.goto("/console/repositories/ns/shop/records?since=yesterday")
            .await;
        assert!(
            b.text("#error-since").await.contains("not a time"),
            "a bad filter is named on its field"
        );

        // A record, and a redelivery that appears as a second attempt with the same webhook-id.
        b.goto(&format!("/console/webhooks/{every}/records?tag=v1"))
            .await;
        b.click("#records tbody tr a[href^='/console/records/']")
            .await;
        assert!(b.text("#request-body").await.contains("\"tag\":\"v1\""));
        assert_eq!(b.text("#record-attempts").await, "1");
        assert_eq!(b.count("section.attempt").await, 1);
        assert!(b.text("section.attempt").await.contains("HTTP 200"));
        b.screenshot("record").await;
        let before = receiver.count();
        b.click("form[action$='/redeliver'] button").await;
        assert!(b.path().await.ends_with("done=redelivered"));
        b.reload_until("#record-attempts", "2", WAIT).await;
        b.reload_until("#record-status", "succeeded", WAIT).await;
        assert_eq!(b.count("section.attempt").await, 2);
        assert_eq!(
            receiver.count(),
            before + 1,
            "one more request reached the receiver"
        );

        // Disable from the repository's list; the database says so too.
        b.goto("/console/repositories/ns/shop").await;
        b.click(&format!(
            "tr[data-webhook='{every}'] form[action$='/enabled'] button"
        ))
        .await;
        assert!(b.body_text().await.contains("The webhook is disabled"));
        assert_eq!(
            b.text(&format!("tr[data-webhook='{every}'] .badge")).await,
            "disabled"
        );
        let enabled: bool = app
            .scalar(&format!("SELECT enabled FROM webhooks WHERE id = {every}"))
            .await;
        assert!(!enabled);

        // A test, a rotation, a change, on the webhook's page.
        b.goto(&format!("/console/webhooks/{every}")).await;
        b.click("form[action$='/test'] button").await;
        let result = b.text(".test-result").await;
        assert!(
            result.contains("succeeded") && result.contains("HTTP 200"),
            "{result}"
        );
        b.click_and_confirm("form[action$='/rotate'] button").await;
        let rotated = b.text("#new-secret").await;
        assert!(rotated.starts_with("whsec_") && rotated != secret);
        b.click("input[name=trigger_type][value=tags]").await;
        b.fill("#tags", "v1, v2").await;
        b.click("#webhook-form button[type=submit]").await;
        assert!(b.body_text().await.contains("The changes were saved"));
        assert!(b.text("dl.facts").await.contains("tags v1, v2"));
        let url: String = app
            .scalar(&format!("SELECT url FROM webhooks WHERE id = {every}"))
            .await;
        assert_eq!(
            url,
            receiver.url("/hook?token=abc"),
            "an empty URL field keeps the URL"
        );

        // Delete, after the browser's confirmation.
        let doomed: i64 = app
            .scalar("SELECT id FROM webhooks WHERE name = 'stable-tags'")
            .await;
        b.goto(&format!("/console/webhooks/{doomed}")).await;
        b.click_and_confirm("form[action$='/delete'] button").await;
        b.find("p.notice").await;
        assert_eq!(b.path().await, "/console/repositories/ns/shop?done=deleted");
        assert_eq!(b.count("#webhooks tbody tr").await, 2);

        // Paging: sixty older records of the webhook, fifty to a page, newest first.
        app.pg
            .execute(
                "INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                         attempts, created_at, occurred_at, watched)
                 SELECT gen_random_uuid(), 'old-' || i, $1, 'ns', 'shop', 'old', 'sha256:00', 'succeeded', 1,
                        now() - make_interval(hours => 1, secs => i), now(), false
                   FROM generate_series(1, 60) AS i",
                &[&every],
            )
            .await
            .unwrap();
        let total: i64 = app.scalar(&format!("SELECT count(*) FROM deliveries WHERE webhook_id = {every}")).await;
        b.goto(&format!("/console/webhooks/{every}/records")).await;
        assert_eq!(b.count("#records tbody tr").await, 50);
        b.click("nav.pager a[href*='cursor=']").await;
        assert_eq!(b.count("#records tbody tr").await as i64, total - 50);
        assert_eq!(b.count("nav.pager a[href*='cursor=']").await, 0, "the last page");
        b.click("nav.pager a").await;
        assert_eq!(b.count("#records tbody tr").await, 50, "back to the newest");

        // Recover: a dead endpoint's failed delivery is queued again from its webhook's page.
        let dead = app
            .insert_webhook_for("ns", "shop", "dead", "http://127.0.0.1:9/", Trigger::All, None)
            .await;
        app.publish_event(&event_for("ns", "shop", "v9")).await;
        eventually("the dead endpoint's delivery failed", WAIT, || async {
            let failed: i64 = app
                .scalar(&format!("SELECT count(*) FROM deliveries WHERE webhook_id = {dead} AND status = 'failed'"))
                .await;
            (failed == 1).then_some(())
        })
        .await;
        let attempts: i32 = app.scalar(&format!("SELECT attempts FROM deliveries WHERE webhook_id = {dead}")).await;
        b.goto(&format!("/console/webhooks/{dead}")).await;
        // The browser's time field is set as a person's picker would set it.
        let since = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).format("%Y-%m-%dT%H:%M:%S").to_string();
        b.script(&format!("document.querySelector('#since').value = '{since}'; return null")).await;
        b.click("#recover-form button").await;
        assert!(b.body_text().await.contains("1 failed deliveries were queued"), "{}", b.body_text().await);
        eventually("another attempt at the dead endpoint", WAIT, || async {
            let now: i32 = app.scalar(&format!("SELECT attempts FROM deliveries WHERE webhook_id = {dead}")).await;
            (now > attempts).then_some(())
        })
        .await;

        // Signing out ends the session.
        b.click("form[action='/console/sign-out'] button").await;
        assert!(b.body_text().await.contains("You are signed out"));
        b.goto("/console/repositories/ns/shop").await;
        assert!(b.path().await.starts_with("/console/sign-in"));
        let _ = app;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_tags_urls_and_response_bodies_is_shown_as_text() {
    let app = TestApp::spawn().await;
    let hostile = "<script>document.title='pwned'</script><img src=x id=injected>";
    let receiver = Receiver::scripted(move |_| Reply::status(200).body(hostile)).await;
    let token = app.token("bob", Scope::Read).await;
    // A row written by SQL may hold anything: the console shows it as it is.
    let hook = app
        .insert_webhook_for("ns", "xss", "all", &receiver.url("/h"), Trigger::All, None)
        .await;
    app.insert_webhook_for(
        "ns",
        "xss",
        "odd",
        "http://<b>bold</b>/",
        Trigger::Tags(&["<i>x</i>"]),
        None,
    )
    .await;
    app.publish_event(&event_for("ns", "xss", "v1")).await;
    eventually("the record", WAIT, || async {
        let done: i64 = app
            .scalar(&format!(
                "SELECT count(*) FROM deliveries WHERE webhook_id = {hook} AND status = 'succeeded'"
            ))
            .await;
        (done == 1).then_some(())
    })
    .await;
    // An event's tag is checked when it arrives, so markup in a tag can only come from the table.
    app.pg
        .execute("UPDATE deliveries SET tag = '<script>document.title=''tag''</script>' WHERE repository = 'xss'", &[])
        .await
        .unwrap();
    with_browser(app, async move |_app, b| {
        sign_in(b, &token).await;
        b.goto("/console/repositories/ns/xss").await;
        let list = b.text("#webhooks").await;
        assert!(
            list.contains("<i>x</i>") && list.contains("<b>bold</b>"),
            "{list}"
        );
        assert_eq!(b.count("#webhooks i, #webhooks b").await, 0);

        b.goto("/console/repositories/ns/xss/records").await;
        assert_eq!(b.count("#records tbody tr").await, 2);
        for cell in b
            .client
            .find_all(fantoccini::Locator::Css("#records td.tag"))
            .await
            .unwrap()
        {
            assert_eq!(
                cell.text().await.unwrap(),
                "<script>document.title='tag'</script>"
            );
        }
        b.goto(&format!("/console/webhooks/{hook}/records")).await;
        b.click("#records tbody tr a[href^='/console/records/']")
            .await;
        let body = b.text("pre.response").await;
        assert_eq!(body, hostile);
        b.screenshot("record-with-markup").await;
        // Only the console's own script is on the page, and nothing injected ran or rendered.
        assert_eq!(
            b.script("return document.querySelectorAll('script').length")
                .await,
            1
        );
        assert_eq!(b.count("#injected").await, 0);
        let title = b.script("return document.title").await;
        assert!(title.as_str().unwrap().ends_with("· tagcast"), "{title}");
        // A read token sees no write controls.
        assert_eq!(b.count("form[action$='/redeliver']").await, 0);
        b.goto("/console/repositories/ns/xss").await;
        assert_eq!(
            b.count("a[href$='/new'], form[action$='/enabled']").await,
            0
        );
    })
    .await;
}

/// The `csrf` value of the first form of a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with its csrf value")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn sessions_are_http_only_cookies_and_forged_or_read_only_writes_are_refused() {
    let app = TestApp::spawn().await;
    let base = format!("http://{}", app.api_addr);
    let write = app.token("ops", Scope::Write).await;
    let read = app.token("viewer", Scope::Read).await;
    let hook = app
        .insert_webhook_for(
            "ns",
            "repo",
            "deploy",
            "http://127.0.0.1:9/",
            Trigger::All,
            None,
        )
        .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A visitor is sent to sign in, and back afterwards.
    let visit = http
        .get(format!("{base}/console/repositories/ns/repo"))
        .send()
        .await
        .unwrap();
    assert_eq!(visit.status(), 303);
    assert_eq!(
        visit.headers()["location"],
        "/console/sign-in?next=%2Fconsole%2Frepositories%2Fns%2Frepo"
    );
    let csp = visit.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // Signing in sets the token as an HttpOnly, SameSite=Strict cookie; `next` stays on the console.
    let signed = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", write.as_str()), ("next", "https://evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    assert_eq!(
        signed.headers()["location"],
        "/console/sign-in/check?next=%2Fconsole%2F"
    );
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/console"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert!(cookie.starts_with(&format!("tagcast_console={write};")));
    let wrong = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", "tgc_not-a-real-token-at-all-000000000000000")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong.headers().get("set-cookie").is_none(),
        "a refused sign-in sets no cookie"
    );
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("That token was not accepted")
    );

    let page = |token: &str| {
        let (http, base, token) = (http.clone(), base.clone(), token.to_owned());
        async move {
            http.get(format!("{base}/console/webhooks/{hook}"))
                .header("cookie", format!("tagcast_console={token}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let disable = |token: &str, csrf: &str, origin: Option<&str>| {
        let (http, base) = (http.clone(), base.clone());
        let (token, csrf, origin) = (token.to_owned(), csrf.to_owned(), origin.map(str::to_owned));
        async move {
            let mut request = http
                .post(format!("{base}/console/webhooks/{hook}/enabled"))
                .header("cookie", format!("tagcast_console={token}"))
                .form(&[("csrf", csrf.as_str()), ("enabled", "false")]);
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    let enabled = || async {
        app.scalar::<bool>(&format!("SELECT enabled FROM webhooks WHERE id = {hook}"))
            .await
    };

    let write_csrf = csrf_of(&page(&write).await);
    let read_page = page(&read).await;
    assert!(
        !read_page.contains("Rotate secret"),
        "a read token sees no write controls"
    );
    let read_csrf = csrf_of(&read_page);
    assert_ne!(write_csrf, read_csrf, "each session has its own form value");

    assert_eq!(
        disable(&write, "", None).await,
        403,
        "a form without the session's value"
    );
    assert_eq!(
        disable(&write, &read_csrf, None).await,
        403,
        "another session's value"
    );
    assert_eq!(
        disable(&write, &write_csrf, Some("http://evil.example")).await,
        403,
        "another site's form"
    );
    assert_eq!(
        disable(&read, &read_csrf, None).await,
        403,
        "a read token cannot write"
    );
    assert!(enabled().await, "none of them changed anything");
    assert_eq!(disable(&write, &write_csrf, Some(&base)).await, 303);
    assert!(!enabled().await);

    // A revoked token ends the session: back to sign in, and the cookie is cleared.
    tagcast::store::tokens::revoke(
        &tagcast::store::connect(&app.settings.database_url, 1).unwrap(),
        "ops",
    )
    .await
    .unwrap();
    let ended = http
        .get(format!("{base}/console/"))
        .header("cookie", format!("tagcast_console={write}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 303);
    assert!(
        ended.headers()["location"]
            .to_str()
            .unwrap()
            .contains("expired=true")
    );
    assert!(
        ended.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    app.teardown().await;
}
