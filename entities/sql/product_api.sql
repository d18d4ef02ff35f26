-- The function refresh_product_cache's fetch_fresh_data step calls (entities/product_cache.yaml):
-- a stand-in for the seed's product API that reads the product table (entities/product.yaml).
-- PL/pgSQL, so it may be created before that table is (its body is bound when it runs).
-- Re-runnable: a migration may apply this file again.
CREATE OR REPLACE FUNCTION public.fetch_product_data_from_api(product_ids uuid[])
RETURNS TABLE (product_id uuid, name text, price numeric)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY
    SELECT p.id, p.name, p.price
    FROM public.product AS p
    WHERE p.id = ANY(product_ids)
    ORDER BY p.id;
END
$$;
