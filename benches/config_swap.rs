// Building a snapshot from a config of 1,000 routes and swapping it in (the reload path,
// off the request path). Aim: under 10 ms.

use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use fusebox::snapshot::{Shared, Snapshot};

fn config_text(routes: usize) -> String {
    let mut s =
        String::from("[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n");
    for u in 0..20 {
        let _ = write!(
            s,
            "[upstreams.u{u}]\nendpoints = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
            10000 + u * 2,
            10001 + u * 2
        );
    }
    for r in 0..routes {
        let _ = write!(
            s,
            "[[routes]]\nname = \"r{r}\"\npath_prefix = \"/api/v{}/m{r}\"\nupstream = \"u{}\"\n",
            r % 4,
            r % 20
        );
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = config_text(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let shared = Shared::new();
    let cfg = fusebox::config::parse(&text, "bench", None).unwrap();
    let first = Snapshot::build(cfg, "v0".into(), None, &shared).unwrap();
    let cell = ArcSwap::from_pointee(first);
    c.bench_function("reload/parse_build_swap_1000_routes", |b| {
        b.iter(|| {
            let cfg = fusebox::config::parse(&text, "bench", None).unwrap();
            let old = cell.load_full();
            let snap = Snapshot::build(cfg, "v1".into(), Some(&old), &shared).unwrap();
            cell.store(Arc::new(snap));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
