//! Spot checks that unusual etcd field numbers survive into the generated code.

use bytes::Bytes;
use cairn_proto::etcdserverpb::{compare, Compare, StatusResponse, WatchResponse};
use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

#[test]
fn compare_range_end_is_field_64() {
    let c = Compare { range_end: Bytes::from_static(b"z"), ..Default::default() };
    // tag = (64 << 3) | 2 = 514 = varint [0x82, 0x04]; length 1; "z".
    assert_eq!(c.encode_to_vec(), vec![0x82, 0x04, 0x01, b'z']);
}

#[test]
fn compare_value_is_oneof_field_7() {
    let c = Compare { target_union: Some(compare::TargetUnion::Value(Bytes::from_static(b"v"))), ..Default::default() };
    assert_eq!(c.encode_to_vec(), vec![(7 << 3) | 2, 0x01, b'v']);
}

#[test]
fn watch_response_events_is_field_11() {
    let w = WatchResponse {
        events: vec![Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: Bytes::from_static(b"k"), ..Default::default() }),
            prev_kv: None,
        }],
        ..Default::default()
    };
    let buf = w.encode_to_vec();
    assert_eq!(buf[0], (11 << 3) | 2);
    assert_eq!(WatchResponse::decode(buf.as_slice()).unwrap(), w);
}

#[test]
fn status_response_late_fields() {
    let s = StatusResponse { is_learner: true, db_size_in_use: 1, ..Default::default() };
    // dbSizeInUse = 9 (varint), isLearner = 10 (varint).
    assert_eq!(s.encode_to_vec(), vec![9 << 3, 0x01, 10 << 3, 0x01]);
}
