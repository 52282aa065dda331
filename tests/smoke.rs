//! The whole path over real sockets: register, push, deliver, ack.

mod common;

use common::*;
use pushgate::proto::{Frame, Status};

#[test]
fn push_reaches_a_device_and_is_acked() {
    let gw = start_gateway(test_config(2));
    let mut dev = Raw::connect(gw.device_addr);
    let (token, hb, missed) = dev.hello(APP, &secret("smoke"), 0);
    assert_eq!(hb, 60);
    assert_eq!(missed, 0);
    let mut prov = Raw::connect(gw.provider_addr);
    assert_eq!(prov.login(APP, APP_SECRET), 1024);
    prov.send(&Frame::Push(push_frame(7, token, 0, b"hello")));
    let (status, msg_id) = prov.expect(|f| match f {
        Frame::Result { req_id: 7, status, msg_id, .. } => (status, msg_id),
        other => panic!("{other:?}"),
    });
    assert_eq!(status, Status::DELIVERED);
    dev.expect(|f| match f {
        Frame::Notify { msg_id: m, payload, .. } => {
            assert_eq!(m, msg_id);
            assert_eq!(payload, b"hello");
        }
        other => panic!("{other:?}"),
    });
    dev.send(&Frame::Ack { msg_id });
    dev.send(&Frame::Ping);
    dev.expect(|f| assert_eq!(f, Frame::Pong));
    gw.drain();
    gw.join();
}
