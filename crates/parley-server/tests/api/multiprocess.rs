//! One `parley serve` per embedded store; `shared.rs` has many on a shared one.

use crate::support::{Backing, Proc, parley};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_refuses_a_second_server() {
    // A shared store takes any number of servers: `shared.rs` covers that.
    let backing = Backing::sqlite();
    let _first = Proc::start(&backing, &[]);
    let out = parley()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(backing.serve_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another `parley serve` is using"), "{stderr}");
}
