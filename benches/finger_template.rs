//! Cost of building one MCC template (cylinders) and its shortlist keys from
//! minutiae, on one core: what enrolment pays per finger and what a start-up
//! pays per stored finger template (`cargo bench --bench finger_template`).
//! The baseline in the same run is `mcc::reference::template`, the cell-by-cell
//! construction `Template::new` replaced (same cylinders, asserted here).

#[path = "support/prints.rs"]
mod prints;

use std::hint::black_box;

use cotejo::finger::{
    mcc::{Template, reference},
    shortlist::Descriptor,
};
use criterion::{Criterion, criterion_group, criterion_main};
use prints::print;
use rand::{SeedableRng, rngs::StdRng};

fn build(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let minutiae = print(&mut rng, 35);
    let template = Template::new(&minutiae);
    assert_eq!(template, reference::template(&minutiae), "the reference builds other cylinders");
    let mut g = c.benchmark_group("finger_template");
    g.bench_function("mcc_template_35", |b| b.iter(|| black_box(Template::new(black_box(&minutiae)))));
    g.bench_function("mcc_template_35_cell_by_cell", |b| {
        b.iter(|| black_box(reference::template(black_box(&minutiae))))
    });
    g.bench_function("shortlist_descriptor_35", |b| b.iter(|| black_box(Descriptor::new(black_box(&template)))));
    g.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
