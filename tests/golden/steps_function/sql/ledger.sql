-- Functions and the sequence close_ledger_month uses (golden case).
CREATE SEQUENCE IF NOT EXISTS public.ledger_copy_seq START 100000000;

-- Per account, the sum of the month's open entries, as new ledger rows.
CREATE OR REPLACE FUNCTION public.ledger_totals(input jsonb)
RETURNS TABLE (account text, amount numeric)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY
    SELECT l.account, sum(l.amount)
    FROM public.ledger AS l
    WHERE l.booked_on >= (input ->> 'since')::date AND l.note IS NULL
    GROUP BY l.account;
END
$$;

-- Checks the copies exist; returns nothing.
CREATE OR REPLACE FUNCTION public.audit_ledger_copies(ids bigint[])
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(ids) AS i WHERE NOT EXISTS (SELECT 1 FROM public.ledger WHERE id = i)) THEN
        RAISE EXCEPTION 'a copy is missing';
    END IF;
END
$$;
