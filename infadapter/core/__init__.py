"""The pure core: profiles, plans, the integer program, policies, control rules, forecasters, the VPA
recommender and the service model. No I/O, no clock reads; nothing here imports another layer."""
