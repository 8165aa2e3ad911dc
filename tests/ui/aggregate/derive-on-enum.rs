use es_core::Aggregate;

#[derive(Default, Aggregate)]
pub enum Order {
    #[default]
    New,
}

fn main() {}
