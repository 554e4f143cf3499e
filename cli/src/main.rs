mod secret;
mod ticket;

fn main() {}
