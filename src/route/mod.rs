//! The routing table: which messages go where, under which names. Pure: no
//! sockets, no clocks; built from the validated config and swapped whole.

pub mod pattern;
pub mod table;

pub use pattern::{Pattern, Template};
pub use table::{
    Destination, Outbound, Route, RouteId, RoutingTable, Skip, Source, Target, TriggerOn,
};
