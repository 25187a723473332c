//! `bedside eval score`'s knowledge measures with the real MiniLM: a response that is its
//! reference scores ROUGE-L 1, cosine 1 and full recall; the same response with its facts
//! negated keeps most of its words but conveys none of them; a record without a reference or
//! key facts gets no knowledge fields.

use bedside_eval::pairs::{knowledge, PairRecord};

fn rec(id: &str, response: &str, reference: Option<&str>, facts: Option<&[&str]>) -> PairRecord {
    PairRecord {
        id: id.into(),
        context: "I had a sedative for my endoscopy this morning and I feel fine. Can I drive home?".into(),
        response: response.into(),
        reference: reference.map(str::to_string),
        key_facts: facts.map(|f| f.iter().map(|s| s.to_string()).collect()),
    }
}

#[test]
fn reference_facts_and_their_contradiction() {
    let Some(dir) = bedside_testutil::model_file("all-minilm-l6-v2") else { return };
    let e = bedside_embed::Embedder::load(&dir, &candle_core::Device::Cpu).unwrap();
    let reference = "I'm glad you feel well. Do not drive for 24 hours after the sedative. Ask someone to take you home.";
    let facts: &[&str] = &["Do not drive for 24 hours after the sedative.", "Ask someone to take you home."];
    let contradicted = "I'm glad you feel well. Do not worry, you can drive after the sedative. You do not need anyone to take you home.";
    let records = [
        rec("same", reference, Some(reference), Some(facts)),
        rec("contradicted", contradicted, Some(reference), Some(facts)),
        rec("comfort", "That sounds like a long morning, and it is good that you feel fine.", None, Some(facts)),
        rec("plain", "You can drive.", None, None),
    ];
    let k = knowledge(&records, &e).unwrap();
    let same = k[0].as_ref().unwrap();
    assert!((same.rouge_l.unwrap() - 1.0).abs() < 1e-9 && (same.similarity.unwrap() - 1.0).abs() < 1e-4, "{same:?}");
    assert_eq!(same.key_fact_recall, Some(1.0), "{same:?}");
    let c = k[1].as_ref().unwrap();
    assert_eq!(c.key_fact_recall, Some(0.0), "{c:?}");
    assert!(c.key_facts.iter().any(|f| f.contradicted), "{c:?}");
    // Lexical overlap alone still calls the contradiction close: that is why recall reads polarity.
    assert!(c.rouge_l.unwrap() > 0.5, "{c:?}");
    let comfort = k[2].as_ref().unwrap();
    assert_eq!((comfort.key_fact_recall, comfort.rouge_l), (Some(0.0), None), "{comfort:?}");
    assert!(k[3].is_none());
    // The JSON `eval score` writes: only the fields that were computed.
    let v = serde_json::to_value(comfort).unwrap();
    assert!(v.get("key_fact_recall").is_some() && v.get("rouge_l").is_none() && v.get("similarity").is_none(), "{v}");
}
