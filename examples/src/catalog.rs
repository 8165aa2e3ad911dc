//! The product catalog: a product is created with a name, price and category, and its
//! price is updated (never to zero or below). `ProductCreated` evolved: version 1 had no SKU,
//! version 2 carries one derived from the name and category, exactly as the catalog's original upgrade did, so
//! stored version 1 events keep loading as version 2.

use chrono::{DateTime, Utc};
use es_core::{Aggregate, Apply, Event, Handle};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Money in the smallest currency unit.
pub type Cents = i64;

/// A product was added to the catalog (version 2: with its SKU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCreated {
    /// The product's id (also its stream id).
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: Cents,
    /// The category it is listed in.
    pub category_id: String,
    /// Stock-keeping unit, derived from category and name.
    pub sku: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// `ProductCreated` as version 1 stored it, before products had a SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCreatedV1 {
    /// The product's id.
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: Cents,
    /// The category it is listed in.
    pub category_id: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The SKU of the upgrade: the category and the name, upper-cased, with every run of
/// characters other than letters and digits turned into one `-`. Pure, so upcasting a stored
/// event always yields the same SKU.
pub fn generate_sku(name: &str, category_id: &str) -> String {
    let mut sku = String::new();
    for part in [category_id, name] {
        for word in part
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
        {
            if !sku.is_empty() {
                sku.push('-');
            }
            sku.extend(word.chars().flat_map(char::to_uppercase));
        }
    }
    sku
}

impl From<ProductCreatedV1> for ProductCreated {
    fn from(v1: ProductCreatedV1) -> Self {
        Self {
            sku: generate_sku(&v1.name, &v1.category_id),
            product_id: v1.product_id,
            name: v1.name,
            price: v1.price,
            category_id: v1.category_id,
            created_at: v1.created_at,
        }
    }
}

/// The price changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PriceUpdated {
    /// The product.
    pub product_id: String,
    /// The price before.
    pub old_price: Cents,
    /// The price now.
    pub new_price: Cents,
    /// When.
    pub updated_at: DateTime<Utc>,
}

/// Everything that happens to a product.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum ProductEvent {
    /// See [`ProductCreated`]; version 1 payloads load through [`ProductCreatedV1`].
    #[event(version = 2, upcast(1 = ProductCreatedV1))]
    ProductCreated(ProductCreated),
    /// See [`PriceUpdated`].
    PriceUpdated(PriceUpdated),
    /// The product left the catalog (`ProductDeleted`); no data.
    ProductDeleted,
}

/// Whether a product can be sold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductStatus {
    /// Not created yet.
    #[default]
    New,
    /// In the catalog.
    Active,
    /// Removed from the catalog.
    Deleted,
}

/// The product aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "product", event = ProductEvent, snapshot_every = 100)]
pub struct Product {
    /// The product's id.
    pub id: Option<String>,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: Cents,
    /// Its category.
    pub category_id: String,
    /// Its SKU.
    pub sku: String,
    /// Whether it can be sold.
    pub status: ProductStatus,
}

impl Apply<ProductCreated> for Product {
    fn apply(&mut self, event: &ProductCreated) {
        self.id = Some(event.product_id.clone());
        self.name.clone_from(&event.name);
        self.price = event.price;
        self.category_id.clone_from(&event.category_id);
        self.sku.clone_from(&event.sku);
        self.status = ProductStatus::Active;
    }
}

impl Apply<PriceUpdated> for Product {
    fn apply(&mut self, event: &PriceUpdated) {
        self.price = event.new_price;
    }
}

impl Apply<product_event::ProductDeleted> for Product {
    fn apply(&mut self, _: &product_event::ProductDeleted) {
        self.status = ProductStatus::Deleted;
    }
}

/// Why a product command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// The product exists already.
    #[error("product already exists")]
    AlreadyExists,
    /// The product was never created.
    #[error("product does not exist")]
    NotFound,
    /// The product was deleted.
    #[error("product was deleted")]
    Deleted,
    /// Prices are positive (`invalid_price`).
    #[error("invalid price {0}: prices must be positive")]
    InvalidPrice(Cents),
    /// A name is required.
    #[error("a product needs a name")]
    MissingName,
}

/// Add a product to the catalog.
#[derive(Debug, Clone)]
pub struct CreateProduct {
    /// The product's id.
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: Cents,
    /// Its category.
    pub category_id: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Change a product's price.
#[derive(Debug, Clone)]
pub struct UpdatePrice {
    /// The new price; must be positive.
    pub new_price: Cents,
    /// When.
    pub at: DateTime<Utc>,
}

/// Remove a product from the catalog.
#[derive(Debug, Clone, Copy)]
pub struct DeleteProduct;

impl Product {
    fn require_active(&self) -> Result<&str, ProductError> {
        match (&self.id, self.status) {
            (_, ProductStatus::Deleted) => Err(ProductError::Deleted),
            (Some(id), ProductStatus::Active) => Ok(id),
            _ => Err(ProductError::NotFound),
        }
    }
}

impl Handle<CreateProduct> for Product {
    type Error = ProductError;
    const CREATES: bool = true;

    fn handle(&self, command: &CreateProduct) -> Result<Vec<ProductEvent>, ProductError> {
        if self.id.is_some() {
            return Err(ProductError::AlreadyExists);
        }
        if command.name.trim().is_empty() {
            return Err(ProductError::MissingName);
        }
        if command.price <= 0 {
            return Err(ProductError::InvalidPrice(command.price));
        }
        Ok(vec![ProductEvent::ProductCreated(ProductCreated {
            product_id: command.product_id.clone(),
            name: command.name.clone(),
            price: command.price,
            category_id: command.category_id.clone(),
            sku: generate_sku(&command.name, &command.category_id),
            created_at: command.at,
        })])
    }
}

impl Handle<UpdatePrice> for Product {
    type Error = ProductError;

    fn handle(&self, command: &UpdatePrice) -> Result<Vec<ProductEvent>, ProductError> {
        let id = self.require_active()?;
        if command.new_price <= 0 {
            return Err(ProductError::InvalidPrice(command.new_price));
        }
        Ok(vec![ProductEvent::PriceUpdated(PriceUpdated {
            product_id: id.to_owned(),
            old_price: self.price,
            new_price: command.new_price,
            updated_at: command.at,
        })])
    }
}

impl Handle<DeleteProduct> for Product {
    type Error = ProductError;

    fn handle(&self, _: &DeleteProduct) -> Result<Vec<ProductEvent>, ProductError> {
        self.require_active()?;
        Ok(vec![ProductEvent::ProductDeleted])
    }
}
