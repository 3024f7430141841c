//! The CDNOW purchase files (Fader & Hardie), as distributed with Lifetimes.
//!
//! Two layouts, told apart by their column count:
//! - master: `customer_id YYYYMMDD number_of_cds dollar_value` (one header line);
//! - sample: `customer_id sample_customer_id YYYYMMDD number_of_cds dollar_value`.
//!
//! Each customer is registered (channel `cdnow`) at their first purchase; each
//! purchase line becomes one `OrderPlaced` (same-day lines stay separate
//! events; models merge them later). Amounts are parsed exactly into cents.
//! Event ids are UUID v5 of `cdnow/<customer>/registered` and
//! `cdnow/<customer>/order/<n>` (the customer's n-th purchase line), so the
//! sample and the master file agree on the customers they share.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::{check_not_in_future, derived_id, LineEvents, LineParser};
use crate::domain::events::{CustomerRegistered, DomainEvent, OrderPlaced, Profile};
use crate::domain::{Currency, CustomerId, EventMetadata, Money, NewEvent};

/// Per-customer progress through the file.
#[derive(Debug, Default)]
struct Seen {
    purchases: u32,
    last_date: Option<NaiveDate>,
}

/// Parser state: which customers have been registered so far.
#[derive(Debug, Default)]
pub struct CdnowParser {
    customers: HashMap<String, Seen>,
}

fn metadata() -> EventMetadata {
    EventMetadata {
        actor: Some("import".into()),
        source: Some("cdnow".into()),
        ..Default::default()
    }
}

impl LineParser for CdnowParser {
    fn parse_line(&mut self, line_no: usize, line: &str) -> Result<Option<LineEvents>, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            return Ok(None);
        }
        if line_no == 1 && fields[0] == "customer_id" {
            return Ok(None);
        }
        let (customer, date, cds, dollars) = match fields.as_slice() {
            [c, d, n, v] => (*c, *d, *n, *v),
            [c, _sample, d, n, v] => (*c, *d, *n, *v),
            _ => {
                return Err(format!(
                "expected 4 columns (customer_id date cds dollars) or 5 (with sample id), found {}",
                fields.len()
            ))
            }
        };
        let customer = CustomerId::parse(customer).map_err(|e| e.to_string())?;
        let day = NaiveDate::parse_from_str(date, "%Y%m%d")
            .map_err(|e| format!("date: {date:?} is not YYYYMMDD ({e})"))?;
        let at: DateTime<Utc> = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        check_not_in_future("date", at).map_err(|e| e.to_string())?;
        let item_count: u32 = cds
            .parse()
            .map_err(|_| format!("number_of_cds: {cds:?} is not a whole number"))?;
        let amount = Money::parse_decimal(dollars, Currency::USD)
            .map_err(|e| format!("dollar_value: {}", e.reason))?;

        let seen = self
            .customers
            .entry(customer.as_str().to_owned())
            .or_default();
        if let Some(last) = seen.last_date {
            if day < last {
                return Err(format!(
                    "purchases of customer {customer} are not in date order ({day} after {last})"
                ));
            }
        }
        let mut events = Vec::with_capacity(2);
        if seen.purchases == 0 {
            let registered = DomainEvent::CustomerRegistered(CustomerRegistered {
                channel: "cdnow".into(),
                acquisition_cost: None,
                profile: Profile::default(),
            });
            let id = derived_id(&format!("cdnow/{customer}/registered"));
            events.push(
                NewEvent::from_domain(id, at, &metadata(), &registered)
                    .map_err(|e| e.to_string())?,
            );
        }
        seen.purchases += 1;
        seen.last_date = Some(day);
        let n = seen.purchases;
        let order = DomainEvent::OrderPlaced(OrderPlaced {
            order_id: format!("cdnow-{customer}-{n}"),
            amount,
            item_count,
        });
        let id = derived_id(&format!("cdnow/{customer}/order/{n}"));
        events.push(NewEvent::from_domain(id, at, &metadata(), &order).map_err(|e| e.to_string())?);
        Ok(Some(LineEvents {
            stream: customer.stream_id(),
            events,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_and_sample_lines_agree() {
        let mut master = CdnowParser::default();
        assert!(master
            .parse_line(1, " customer_id  date number_of_cds  dollar_value")
            .unwrap()
            .is_none());
        let a = master
            .parse_line(2, " 00004 19970101  2   29.33")
            .unwrap()
            .unwrap();
        let mut sample = CdnowParser::default();
        let b = sample
            .parse_line(1, " 00004 0001 19970101  2   29.33")
            .unwrap()
            .unwrap();
        assert_eq!(a.stream, b.stream);
        assert_eq!(a.events, b.events);
        assert_eq!(a.events.len(), 2, "registration then order");
        assert_eq!(a.events[0].event_type(), "CustomerRegistered");
        let order = &a.events[1];
        assert!(
            order.payload_json().contains(r#""minor":2933"#),
            "{}",
            order.payload_json()
        );
        let next = master
            .parse_line(3, " 00004 19970118  2   29.73")
            .unwrap()
            .unwrap();
        assert_eq!(next.events.len(), 1);
    }

    #[test]
    fn bad_lines_name_the_problem() {
        let mut p = CdnowParser::default();
        let err = p.parse_line(2, " 00001 1997-01-01 1 11.77").unwrap_err();
        assert!(err.starts_with("date:"), "{err}");
        let err = p.parse_line(2, " 00001 19970101 one 11.77").unwrap_err();
        assert!(err.starts_with("number_of_cds:"), "{err}");
        let err = p.parse_line(2, " 00001 19970101 1 11.777").unwrap_err();
        assert!(err.starts_with("dollar_value:"), "{err}");
        let err = p.parse_line(2, " 00001 19970101 1").unwrap_err();
        assert!(err.contains("found 3"), "{err}");
        let err = p.parse_line(2, " 00001 29970101 1 1.00").unwrap_err();
        assert!(err.contains("future"), "{err}");
        p.parse_line(3, " 00002 19970105 1 1.00").unwrap();
        let err = p.parse_line(4, " 00002 19970104 1 1.00").unwrap_err();
        assert!(err.contains("not in date order"), "{err}");
    }
}
