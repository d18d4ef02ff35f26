-- Functions sweep_parcels calls (golden case).
CREATE OR REPLACE FUNCTION public.heavy_parcels()
RETURNS SETOF uuid
LANGUAGE sql STABLE
AS $$ SELECT id FROM public.parcel WHERE weight > 30 ORDER BY id $$;

CREATE OR REPLACE FUNCTION public.restock_parcels(cutoff timestamptz)
RETURNS TABLE (id uuid, status text, weight integer)
LANGUAGE sql STABLE
AS $$ SELECT md5(cutoff::text || g)::uuid, 'new', 1 FROM generate_series(1, 3) AS g WHERE cutoff IS NOT NULL $$;
