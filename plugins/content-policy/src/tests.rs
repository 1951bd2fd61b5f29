//! The plugin through the SDK's native test host: each rejection, the header and the tag on
//! a normal message, and the config defaults.

use plugin_sdk::prelude::*;
use plugin_sdk::testing::{self, MessageBuilder, TestHost};
use serde_json::json;

use super::ContentPolicy;

const DATE: &str = "Fri, 20 Nov 2026 10:00:00 +0000";

/// A well-formed message: From, To, Date, Subject and a body.
fn letter() -> MessageBuilder {
    testing::message()
        .from("Alice <alice@example.test>")
        .to("bob@example.org")
        .header("Date", DATE)
        .subject("Spring offers")
        .body("Hello Bob")
}

fn judge(message: MessageBuilder) -> DataVerdict {
    ContentPolicy::default().on_data(&message.into_data("alice@example.test", &["bob@example.org"]))
}

fn rejected(code: u16, enhanced: &str, text: &str) -> DataAction {
    DataAction::Reject(SmtpReply::new(code, enhanced, text))
}

fn configured(config: serde_json::Value) -> TestHost {
    let host = TestHost::new();
    host.set_config_value(&config).expect("config is JSON");
    host
}

#[test]
fn describes_itself_as_content_policy() {
    assert_eq!(ContentPolicy::NAME, "content-policy");
    assert_eq!(ContentPolicy::describe().hooks, [Hook::OnData]);
}

#[test]
fn a_normal_message_gets_the_header_and_the_campaign_tag_and_no_opinion() {
    let _host = configured(json!({ "add_header": "X-Content-Policy: checked" }));
    let verdict = judge(
        letter()
            .header("X-Campaign", " spring ")
            .attachment("report.pdf", "application/pdf"),
    );
    assert_eq!(verdict.action, DataAction::NoOpinion);
    assert_eq!(
        verdict.add_headers,
        vec![Header::new("X-Content-Policy", "checked")]
    );
    assert_eq!(verdict.tags, vec![Tag::new("campaign", "spring")]);
}

#[test]
fn the_defaults_add_no_header_and_tag_by_x_campaign() {
    let _host = TestHost::new();
    let verdict = judge(letter().header("x-campaign", "autumn"));
    assert_eq!(
        verdict,
        DataVerdict::no_opinion().with_tag("campaign", "autumn")
    );
    assert_eq!(
        judge(letter()),
        DataVerdict::no_opinion(),
        "no X-Campaign: no tag"
    );
    assert_eq!(
        judge(letter().header("X-Campaign", "  ")),
        DataVerdict::no_opinion(),
        "blank: no tag"
    );
}

#[test]
fn the_tag_header_and_key_are_configurable() {
    let _host = configured(json!({ "tag_header": "X-Job", "tag_key": "job" }));
    let verdict = judge(
        letter()
            .header("X-Campaign", "spring")
            .header("X-Job", "42"),
    );
    assert_eq!(verdict.tags, vec![Tag::new("job", "42")]);
}

#[test]
fn a_blocked_extension_is_rejected_with_its_name() {
    let _host = TestHost::new();
    let verdict = judge(letter().attachment("run.exe", "application/octet-stream"));
    assert_eq!(
        verdict.action,
        rejected(
            550,
            "5.7.1",
            "Attachment \"run.exe\" is not allowed (blocked type .exe)"
        )
    );
    assert!(verdict.add_headers.is_empty() && verdict.tags.is_empty());
}

#[test]
fn a_double_extension_is_judged_by_its_last_one() {
    let _host = TestHost::new();
    let verdict = judge(
        letter()
            .attachment("report.pdf", "application/pdf")
            .attachment("invoice.pdf.exe", "application/pdf"),
    );
    assert_eq!(
        verdict.action,
        rejected(
            550,
            "5.7.1",
            "Attachment \"invoice.pdf.exe\" is not allowed (blocked type .exe)"
        )
    );
    let verdict = judge(letter().attachment("example.com.pdf", "application/pdf"));
    assert_eq!(
        verdict.action,
        DataAction::NoOpinion,
        ".com inside the name is not the extension"
    );
}

#[test]
fn extensions_are_compared_without_case() {
    let _host = TestHost::new();
    let verdict = judge(letter().attachment("Setup.VBS", "text/plain"));
    assert_eq!(
        verdict.action,
        rejected(
            550,
            "5.7.1",
            "Attachment \"Setup.VBS\" is not allowed (blocked type .vbs)"
        )
    );
}

#[test]
fn a_blocked_media_type_is_rejected_whatever_the_name() {
    let _host = TestHost::new();
    let verdict = judge(letter().attachment("update.bin", "application/x-msdownload"));
    assert_eq!(
        verdict.action,
        rejected(
            550,
            "5.7.1",
            "Attachment \"update.bin\" is not allowed (blocked type application/x-msdownload)"
        )
    );
    let unnamed = MimePart {
        content_type: "application/x-dosexec".to_owned(),
        filename: None,
        is_attachment: false,
        size: 4096,
    };
    let verdict = judge(letter().part(unnamed));
    assert_eq!(
        verdict.action,
        rejected(
            550,
            "5.7.1",
            "Attachment is not allowed (blocked type application/x-dosexec)"
        )
    );
}

#[test]
fn an_inline_part_with_a_blocked_name_is_rejected_too() {
    let _host = TestHost::new();
    let inline = MimePart {
        content_type: "application/octet-stream".to_owned(),
        filename: Some("tool.scr".to_owned()),
        is_attachment: false,
        size: 10,
    };
    assert!(matches!(
        judge(letter().part(inline)).action,
        DataAction::Reject(_)
    ));
}

#[test]
fn a_configured_list_replaces_the_default_one() {
    let _host = configured(json!({ "blocked_extensions": [".ZIP"], "blocked_types": [] }));
    assert_eq!(
        judge(letter().attachment("run.exe", "application/x-msdownload")).action,
        DataAction::NoOpinion
    );
    assert_eq!(
        judge(letter().attachment("photos.zip", "application/zip")).action,
        rejected(
            550,
            "5.7.1",
            "Attachment \"photos.zip\" is not allowed (blocked type .zip)"
        )
    );
}

#[test]
fn a_message_without_from_is_rejected() {
    let _host = TestHost::new();
    let message = testing::message()
        .to("bob@example.org")
        .header("Date", DATE)
        .body("hi");
    assert_eq!(
        judge(message).action,
        rejected(550, "5.6.0", "Message has no From header (RFC 5322 3.6.2)")
    );
}

#[test]
fn a_from_without_an_address_is_rejected() {
    let _host = TestHost::new();
    let message = testing::message().from("undisclosed").header("Date", DATE);
    assert_eq!(
        judge(message).action,
        rejected(
            550,
            "5.6.0",
            "Message From header has no address (RFC 5322 3.6.2)"
        )
    );
}

#[test]
fn a_message_without_date_is_rejected() {
    let _host = TestHost::new();
    let message = testing::message()
        .from("alice@example.test")
        .to("bob@example.org");
    assert_eq!(
        judge(message).action,
        rejected(550, "5.6.0", "Message has no Date header (RFC 5322 3.6.1)")
    );
}

#[test]
fn from_and_date_checks_can_be_turned_off() {
    let _host = configured(json!({ "require_from": false, "require_date": false }));
    assert_eq!(
        judge(testing::message().body("bare")).action,
        DataAction::NoOpinion
    );
}

#[test]
fn a_blocked_attachment_is_reported_before_missing_headers() {
    let host = TestHost::new();
    let verdict = judge(testing::message().attachment("run.bat", "application/octet-stream"));
    assert_eq!(
        verdict.action,
        rejected(
            550,
            "5.7.1",
            "Attachment \"run.bat\" is not allowed (blocked type .bat)"
        )
    );
    assert!(
        host.logged_at(
            Level::Info,
            "rejected message from <alice@example.test>: 550 5.7.1"
        ),
        "{:?}",
        host.logs()
    );
}

#[test]
fn a_broken_config_is_logged_and_gives_no_opinion() {
    let host = configured(json!({ "blocked_extensions": "exe" }));
    let verdict = judge(letter().attachment("run.exe", "application/octet-stream"));
    assert_eq!(verdict, DataVerdict::no_opinion());
    assert!(
        host.logged_at(Level::Error, "[plugins.content-policy]"),
        "{:?}",
        host.logs()
    );
}
