import { userKeyRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export { userKeyRoute as GET, userKeyRoute as PUT, userKeyRoute as DELETE };
