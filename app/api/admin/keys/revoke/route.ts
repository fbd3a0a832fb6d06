import { adminKeyRevokeRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export { adminKeyRevokeRoute as POST };
