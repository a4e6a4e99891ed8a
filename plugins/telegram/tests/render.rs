//! Markdown → Telegram HTML, escaping, and chunking at 4,096 UTF-16 code units.

use switchboard_telegram::render::{
    MAX_UNITS, escape, markdown_chunks, plain_chunks, split_escaped,
};

fn one(markdown: &str) -> String {
    let chunks = markdown_chunks(markdown);
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    chunks.into_iter().next().unwrap()
}

fn units(s: &str) -> usize {
    s.encode_utf16().count()
}

#[test]
fn text_is_escaped() {
    assert_eq!(
        escape("a < b && c > \"d\""),
        "a &lt; b &amp;&amp; c &gt; &quot;d&quot;"
    );
    assert_eq!(one("1 < 2 & 3 > 2"), "1 &lt; 2 &amp; 3 &gt; 2");
    assert_eq!(one("<b>not a tag</b>"), "&lt;b&gt;not a tag&lt;/b&gt;");
}

#[test]
fn inline_markup() {
    assert_eq!(one("**bold** and __also__"), "<b>bold</b> and <b>also</b>");
    assert_eq!(one("*it* _it_ ~~gone~~"), "<i>it</i> <i>it</i> <s>gone</s>");
    assert_eq!(
        one("run `a<b && c`"),
        "run <code>a&lt;b &amp;&amp; c</code>"
    );
    assert_eq!(
        one("see [the **docs**](https://x.test/a?b=1&c=\"2\")"),
        "see <a href=\"https://x.test/a?b=1&amp;c=&quot;2&quot;\">the <b>docs</b></a>"
    );
    assert_eq!(
        one("# Title\n- item\n  * sub"),
        "<b>Title</b>\n• item\n  • sub"
    );
}

#[test]
fn unmatched_or_inner_word_markers_stay_literal() {
    assert_eq!(
        one("snake_case_name and 2 * 3 * 4"),
        "snake_case_name and 2 * 3 * 4"
    );
    assert_eq!(one("a ** b"), "a ** b");
    assert_eq!(one("`open"), "`open");
    assert_eq!(one("[label] (x) [](y) [z]()"), "[label] (x) [](y) [z]()");
}

#[test]
fn code_blocks_keep_their_text_escaped() {
    assert_eq!(
        one("before\n\n```rust\nif a < b { x && y }\n```\nafter"),
        "before\n\n<pre><code class=\"language-rust\">if a &lt; b { x &amp;&amp; y }</code></pre>\n\nafter"
    );
    assert_eq!(one("```\n**not bold**\n```"), "<pre>**not bold**</pre>");
    // A streamed reply may stop inside a block: it is closed.
    assert_eq!(one("```\nhalf"), "<pre>half</pre>");
}

#[test]
fn empty_text_is_no_message() {
    assert!(markdown_chunks("").is_empty());
    assert!(markdown_chunks("\n \n").is_empty());
}

#[test]
fn long_text_is_cut_between_paragraphs_and_every_chunk_fits() {
    let paragraph = "word ".repeat(300); // 1,500 units
    let text = [paragraph.trim(); 6].join("\n\n");
    let chunks = markdown_chunks(&text);
    assert!(chunks.len() >= 3, "{}", chunks.len());
    for chunk in &chunks {
        assert!(units(chunk) <= MAX_UNITS);
        assert!(!chunk.starts_with('\n') && !chunk.ends_with(' '));
    }
    assert_eq!(chunks.join("\n\n"), text, "nothing lost or added");
}

#[test]
fn a_long_code_block_is_split_into_closed_pre_blocks() {
    let code: Vec<String> = (0..600).map(|i| format!("let x{i} = a < b;")).collect();
    let chunks = markdown_chunks(&format!("```js\n{}\n```", code.join("\n")));
    assert!(chunks.len() >= 3, "{}", chunks.len());
    for chunk in &chunks {
        assert!(units(chunk) <= MAX_UNITS, "{}", units(chunk));
        assert!(
            chunk.starts_with("<pre><code class=\"language-js\">"),
            "{chunk:.60}"
        );
        assert!(chunk.ends_with("</code></pre>"));
        assert_eq!(
            chunk.matches("<pre>").count(),
            chunk.matches("</pre>").count()
        );
        // Cut between lines, never inside an entity.
        assert!(!chunk.contains("&l<") && !chunk.contains("&lt</"));
    }
    let lines: usize = chunks.iter().map(|c| c.matches("a &lt; b;").count()).sum();
    assert_eq!(lines, 600);
}

#[test]
fn a_split_never_falls_inside_a_surrogate_pair_or_an_entity() {
    // 😀 is two UTF-16 units; an odd limit forces the question.
    let text = "😀".repeat(5000);
    let pieces = split_escaped(&text, MAX_UNITS - 1);
    assert!(
        pieces
            .iter()
            .all(|p| units(p) < MAX_UNITS && units(p).is_multiple_of(2))
    );
    assert_eq!(pieces.concat(), text);
    let entities = split_escaped(&"&".repeat(2000), 4096);
    assert!(
        entities
            .iter()
            .all(|p| p.len() % 5 == 0 && p.starts_with("&amp;"))
    );
    assert_eq!(entities.concat().len(), 2000 * 5);
    // Without a blank line or a space, a long word is cut between characters.
    let chunks = markdown_chunks(&"é".repeat(9000));
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().all(|c| units(c) <= MAX_UNITS));
}

#[test]
fn notices_are_plain_text() {
    assert_eq!(
        plain_chunks("Use **/new** <now>"),
        vec!["Use **/new** &lt;now&gt;"]
    );
}
