-- Functions the steps of generate_monthly_invoices call (entities/invoice.yaml), standing in
-- for a billing system: usage comes from a table, a PDF is a URL, a notification an outbox row.
-- Re-runnable: a migration may apply this file again.

CREATE TABLE IF NOT EXISTS public.customer_usage (
    customer_id uuid NOT NULL,
    used_on date NOT NULL,
    amount numeric NOT NULL
);

CREATE TABLE IF NOT EXISTS public.invoice_notifications (
    invoice_id uuid PRIMARY KEY,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per customer with usage in the month: what create_invoices inserts.
CREATE OR REPLACE FUNCTION public.calculate_customer_usage(input jsonb)
RETURNS TABLE (customer_id uuid, total_amount numeric)
LANGUAGE sql STABLE
AS $$
    SELECT u.customer_id, sum(u.amount)
    FROM public.customer_usage AS u
    WHERE date_trunc('month', u.used_on) = date_trunc('month', (input ->> 'month')::date)
    GROUP BY u.customer_id
    ORDER BY u.customer_id
$$;

-- "Render" each invoice: its pdf_url. Returns the invoices it rendered.
CREATE OR REPLACE FUNCTION public.generate_invoice_pdf(invoice_ids uuid[])
RETURNS SETOF uuid
LANGUAGE sql
AS $$
    UPDATE public.invoice
    SET pdf_url = 'https://invoices.example/' || id || '.pdf'
    WHERE id = ANY(invoice_ids)
    RETURNING id
$$;

-- "Send" each invoice once: an outbox row per invoice.
CREATE OR REPLACE FUNCTION public.send_invoice_notifications(invoice_ids uuid[])
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO public.invoice_notifications (invoice_id)
    SELECT unnest(invoice_ids)
    ON CONFLICT (invoice_id) DO NOTHING
$$;
