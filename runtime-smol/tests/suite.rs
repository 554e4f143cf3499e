//! The shared suites of `pam-lite-driver-tests` on this runtime: one line per test, the assertions live
//! in the suites (the same for every runtime).

use pam_lite_driver_tests::{driver, forward, stream};
use pam_lite_smol::Smol as R;

#[test]
fn announces_host_candidate_then_gathering_complete() {
    driver::announces_host_candidate_then_gathering_complete::<R>();
}

#[test]
fn echo_node_answers_datagrams_with_real_addresses() {
    driver::echo_node_answers_datagrams_with_real_addresses::<R>();
}

#[test]
fn echo_returns_every_datagram_of_20_megabytes() {
    driver::echo_returns_every_datagram_of_20_megabytes::<R>();
}

#[test]
fn timer_fires_when_due() {
    driver::timer_fires_when_due::<R>();
}

#[test]
fn http_pooled_requests_share_one_connection_and_return_everything() {
    driver::http_pooled_requests_share_one_connection_and_return_everything::<R>();
}

#[test]
fn http_fresh_requests_open_new_connections() {
    driver::http_fresh_requests_open_new_connections::<R>();
}

#[test]
fn http_timeout_and_refusal_are_errors_without_secrets() {
    driver::http_timeout_and_refusal_are_errors_without_secrets::<R>();
}

#[test]
fn http_body_is_bounded() {
    driver::http_body_is_bounded::<R>();
}

#[test]
fn websocket_delivers_text_frames_then_close() {
    driver::websocket_delivers_text_frames_then_close::<R>();
}

#[test]
fn websocket_close_output_sends_a_close_frame_and_reports_nothing() {
    driver::websocket_close_output_sends_a_close_frame_and_reports_nothing::<R>();
}

#[test]
fn websocket_upgrade_goes_on_the_preconnection() {
    driver::websocket_upgrade_goes_on_the_preconnection::<R>();
}

#[test]
fn websocket_a_gone_preconnection_is_reported() {
    driver::websocket_a_gone_preconnection_is_reported::<R>();
}

#[test]
fn websocket_oversized_frame_and_handshake_timeout_close() {
    driver::websocket_oversized_frame_and_handshake_timeout_close::<R>();
}

#[test]
fn app_outputs_are_forwarded_and_finish_flushes_transmits() {
    driver::app_outputs_are_forwarded_and_finish_flushes_transmits::<R>();
}

#[test]
fn transmit_from_a_foreign_source_is_dropped() {
    driver::transmit_from_a_foreign_source_is_dropped::<R>();
}

#[test]
fn dropping_the_handle_closes_the_node() {
    driver::dropping_the_handle_closes_the_node::<R>();
}

#[test]
fn websocket_close_while_connecting_reports_nothing_and_a_new_connect_works() {
    driver::websocket_close_while_connecting_reports_nothing_and_a_new_connect_works::<R>();
}

#[test]
fn unspecified_bind_announces_explicit_candidates_and_reports_real_addresses() {
    driver::unspecified_bind_announces_explicit_candidates_and_reports_real_addresses::<R>();
}

#[test]
fn unspecified_bind_without_candidates_announces_interfaces() {
    driver::unspecified_bind_without_candidates_announces_interfaces::<R>();
}

#[test]
fn https_trusts_the_extra_ca_rejects_unknown_and_insecure_accepts() {
    driver::https_trusts_the_extra_ca_rejects_unknown_and_insecure_accepts::<R>();
}

#[test]
fn wss_with_the_extra_ca_delivers_messages() {
    driver::wss_with_the_extra_ca_delivers_messages::<R>();
}

#[test]
fn wss_with_an_unknown_certificate_closes() {
    driver::wss_with_an_unknown_certificate_closes::<R>();
}

#[test]
fn client_side_pipes_both_ways_with_half_close_and_numbers_connections() {
    forward::client_side_pipes_both_ways_with_half_close_and_numbers_connections::<R>();
}

#[test]
fn client_reset_becomes_close_connection() {
    forward::client_reset_becomes_close_connection::<R>();
}

#[test]
fn gateway_side_dials_target_and_pipes_with_half_close() {
    forward::gateway_side_dials_target_and_pipes_with_half_close::<R>();
}

#[test]
fn gateway_side_reports_a_refused_target() {
    forward::gateway_side_reports_a_refused_target::<R>();
}

#[test]
fn a_stall_close_aborts_a_blocked_writer_and_dispatch_never_waits() {
    forward::a_stall_close_aborts_a_blocked_writer_and_dispatch_never_waits::<R>();
}

#[test]
fn tcp_stream_echoes_megabytes_and_closes_on_request() {
    stream::tcp_stream_echoes_megabytes_and_closes_on_request::<R>();
}

#[test]
fn tcp_stream_closed_by_the_server_reports_closed_once() {
    stream::tcp_stream_closed_by_the_server_reports_closed_once::<R>();
}

#[test]
fn tcp_stream_connect_refused_closes_with_a_reason() {
    stream::tcp_stream_connect_refused_closes_with_a_reason::<R>();
}

#[test]
fn tcp_stream_write_bound_closes_when_the_server_does_not_read() {
    stream::tcp_stream_write_bound_closes_when_the_server_does_not_read::<R>();
}

#[test]
fn tls_stream_verifies_the_name_and_echoes() {
    stream::tls_stream_verifies_the_name_and_echoes::<R>();
}

#[test]
fn stream_connect_and_handshake_are_bounded() {
    stream::stream_connect_and_handshake_are_bounded::<R>();
}

#[test]
fn streams_are_independent_and_closing_one_while_connecting_reports_nothing() {
    stream::streams_are_independent_and_closing_one_while_connecting_reports_nothing::<R>();
}
