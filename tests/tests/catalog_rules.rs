//! The catalog's product rules as given/when/then tests, and the v1 -> v2 `ProductCreated`
//! upgrade: a stored v1 event loads as v2 with the SKU `generate_sku` derives.

use chrono::{DateTime, TimeZone, Utc};
use es_core::testing::{given, given_no_events};
use es_core::{
    Aggregate, CommandContext, EventStore, ExpectedVersion, MemoryStore, NewEvent, RawJson,
    Repository, StreamKey,
};
use es_examples::catalog::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 9, minute, 0).unwrap()
}

fn created() -> ProductEvent {
    ProductEvent::ProductCreated(ProductCreated {
        product_id: "p-1".into(),
        name: "Green Tea 100g".into(),
        price: 1_200,
        category_id: "tea".into(),
        sku: "TEA-GREEN-TEA-100G".into(),
        created_at: at(0),
    })
}

fn create(price: Cents) -> CreateProduct {
    CreateProduct {
        product_id: "p-1".into(),
        name: "Green Tea 100g".into(),
        price,
        category_id: "tea".into(),
        at: at(0),
    }
}

fn update(new_price: Cents) -> UpdatePrice {
    UpdatePrice {
        new_price,
        at: at(5),
    }
}

#[test]
fn create_a_product_with_its_sku() {
    let product = given_no_events::<Product>()
        .when(create(1_200))
        .then_events([created()]);
    assert_eq!(
        (product.status, product.sku.as_str()),
        (ProductStatus::Active, "TEA-GREEN-TEA-100G")
    );
}

#[test]
fn create_twice_is_rejected() {
    given::<Product>([created()])
        .when(create(1_200))
        .then_error(ProductError::AlreadyExists);
}

#[test]
fn create_with_a_price_of_zero_or_less_is_rejected() {
    given_no_events::<Product>()
        .when(create(0))
        .then_error(ProductError::InvalidPrice(0));
    given_no_events::<Product>()
        .when(create(-5))
        .then_error(ProductError::InvalidPrice(-5));
}

#[test]
fn create_without_a_name_is_rejected() {
    let nameless = CreateProduct {
        name: "  ".into(),
        ..create(100)
    };
    given_no_events::<Product>()
        .when(nameless)
        .then_error(ProductError::MissingName);
}

#[test]
fn update_price_records_old_and_new() {
    let product = given::<Product>([created()])
        .when(update(1_500))
        .then_events([ProductEvent::PriceUpdated(PriceUpdated {
            product_id: "p-1".into(),
            old_price: 1_200,
            new_price: 1_500,
            updated_at: at(5),
        })]);
    assert_eq!(product.price, 1_500);
}

#[test]
fn update_price_to_zero_or_less_is_rejected() {
    given::<Product>([created()])
        .when(update(0))
        .then_error(ProductError::InvalidPrice(0));
    given::<Product>([created()])
        .when(update(-1))
        .then_error(ProductError::InvalidPrice(-1));
}

#[test]
fn update_price_of_a_missing_or_deleted_product_is_rejected() {
    given_no_events::<Product>()
        .when(update(100))
        .then_error(ProductError::NotFound);
    given::<Product>([created(), ProductEvent::ProductDeleted])
        .when(update(100))
        .then_error(ProductError::Deleted);
}

#[test]
fn delete_a_product_once() {
    let product = given::<Product>([created()])
        .when(DeleteProduct)
        .then_events([ProductEvent::ProductDeleted]);
    assert_eq!(product.status, ProductStatus::Deleted);
    given::<Product>([created(), ProductEvent::ProductDeleted])
        .when(DeleteProduct)
        .then_error(ProductError::Deleted);
}

#[test]
fn skus_join_category_and_name_in_upper_case() {
    assert_eq!(generate_sku("Green Tea 100g", "tea"), "TEA-GREEN-TEA-100G");
    assert_eq!(
        generate_sku("  café  au lait!", "drinks/hot"),
        "DRINKS-HOT-CAFÉ-AU-LAIT"
    );
    assert_eq!(generate_sku("", ""), "");
}

#[tokio::test]
async fn a_stored_version_1_product_loads_as_version_2_with_a_derived_sku() {
    let store = MemoryStore::new();
    let v1 = ProductCreatedV1 {
        product_id: "p-9".into(),
        name: "Oolong".into(),
        price: 900,
        category_id: "tea".into(),
        created_at: at(1),
    };
    let stored = NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "ProductCreated".into(),
        schema_version: 1,
        payload: RawJson::encode(&v1).unwrap(),
        metadata: RawJson::empty_object(),
    };
    store
        .append(
            StreamKey::new(Product::NAME, "p-9"),
            ExpectedVersion::NoStream,
            vec![stored],
        )
        .await
        .unwrap();
    let products = Repository::<Product, _>::new(store);
    let loaded = products.load("p-9").await.unwrap();
    assert_eq!(
        (loaded.state.sku.as_str(), loaded.state.price),
        ("TEA-OOLONG", 900)
    );
    let updated = products
        .execute("p-9", &update(950), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!((updated.version, updated.state.price), (2, 950));
}
